"""The peers `nextword bench compare` measures nextword against, each a real language server on stdio.

- naive (naive.py): Hugging Face transformers' LlamaForCausalLM on the same weights, recomputing the
  whole context on every request, as a straightforward implementation would.
- llamacpp (llamacpp.py): llama.cpp through llama-cpp-python on the same model's Q4_1 GGUF, reusing
  its KV cache across requests (the longest common token prefix is kept).

Both answer through one thin adapter (adapter.py: documents and completion only) and extend words
the same simple way (words.py): the 3 likeliest first tokens that agree with the typed prefix, each
extended greedily to the end of the word.

Run one with `python -m nextword.eval.peers naive|llamacpp [options]`.
"""
