"""The naive peer: Hugging Face transformers' LlamaForCausalLM on nextword's model file,
recomputing the whole context on every request (no cache kept between requests).

Within one request it is not wasteful: the context's keys/values from that request's forward pass
are reused to extend the candidates, all of them in one batch per step, and only the last
position's logits are computed (`logits_to_keep=1`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from nextword.eval.peers.words import Vocab, distinct_words, start_beams
from nextword.model.loading import resolve_device
from nextword.model.weights_file import read_model_file
from nextword.tokenizer import Tokenizer
from nextword.weights.hf_convert import to_transformers


class NaiveBackend:
    def __init__(self, model_path: str | Path, device: str = "cpu"):
        file = read_model_file(model_path)
        c = file.config
        self.device = resolve_device(device)
        # fp32: what a straightforward implementation loads
        self.model = to_transformers(file).requires_grad_(False).to(self.device)
        self.tokenizer = Tokenizer.from_json(file.tokenizer_json, c.bos_id, c.eos_id)
        special = self.tokenizer.special_ids
        self.vocab = Vocab([piece.decode("utf-8", "replace") if i not in special else ""
                            for i, piece in enumerate(self.tokenizer.token_bytes)])
        self.document_start = self.tokenizer.document_start_id
        self.description = f"transformers LlamaForCausalLM, {file.path.name}, fp32 on {self.device}"

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    @torch.inference_mode()
    def complete(self, text: str, need: str, n: int) -> list[str]:
        ids = torch.tensor([[self.document_start] + self.tokenize(text)], device=self.device)
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)  # the whole context, every time
        beams = start_beams(self.vocab, out.logits[0, -1].float().cpu().numpy(), need, n)
        if not beams:
            return []
        cache = out.past_key_values
        cache.batch_repeat_interleave(len(beams))
        while not all(beam.done for beam in beams):
            last = torch.tensor([[beam.tokens[-1]] for beam in beams], device=self.device)
            out = self.model(input_ids=last, past_key_values=cache, use_cache=True, logits_to_keep=1)
            logits = out.logits[:, -1].float().cpu().numpy()
            for beam, row in zip(beams, logits):
                if not beam.done:
                    beam.advance(self.vocab, row)
        return distinct_words(beams)
