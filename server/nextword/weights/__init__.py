"""Model weights: the default model's build, converters from GGUF and Hugging Face checkpoints,
and the `nextword weights` command."""
