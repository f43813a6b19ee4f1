"""Transfer learning: LoRA fine-tuning on a person's own writing (`nextword finetune`)."""
