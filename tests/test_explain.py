"""Why this word: the attention probe, `explain`, its heatmap and CLI, and completionItem/resolve.

The probe recomputes the last context token with attention written out; the first tests prove it
is the same computation as the forward pass (logits) and as transformers' eager attention
(weights), so what `explain` shows is what the model really did.
"""

import asyncio
import sys

import pytest
import pytest_lsp
import torch
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

from nextword.cli import main
from nextword.lsp.completion import explained_item
from nextword.model.attention_map import probe_attention
from nextword.model.config import ModelConfig
from nextword.model.llama import Transformer, fused_state_dict
from nextword.model.loading import load_model
from nextword.predict.explain import explain, save_heatmap
from nextword.predict.session import Session

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PROSE = ("It was a bright cold day in April, and the clocks were striking thirteen. Winston Smith, "
         "his chin nuzzled into his breast in an effort to escape the vile wind, slipped quickly")


def tiny_models() -> tuple[Transformer, torch.nn.Module]:
    """A tiny random Llama (grouped-query attention, 2 query heads per key/value head) as ours and
    as transformers' eager reference, with the same weights."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=96, dim=64, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=16, ffn_dim=128,
                         rope_theta=10000.0)
    reference = LlamaForCausalLM(LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, rope_theta=10000.0, rms_norm_eps=config.norm_eps,
        tie_word_embeddings=True, attn_implementation="eager")).eval()
    ours = Transformer(config)
    ours.load_state_dict(fused_state_dict(dict(reference.state_dict()), config), strict=True)
    return ours.eval(), reference


def test_probe_equals_the_forward_pass_and_eager_attention():
    ours, reference = tiny_models()
    ids = torch.randint(0, 96, (23,)).tolist()
    session = Session(ours)
    forward_logits = session.sync(ids)
    probe = probe_attention(ours, session.cache, session.ids)
    assert (probe.logits - forward_logits).abs().max().item() < 1e-4
    with torch.no_grad():
        out = reference(torch.tensor([ids]), output_attentions=True)
    eager = torch.stack([layer[0, :, -1] for layer in out.attentions])  # [layers, heads, context]: the last row
    assert probe.weights.shape == eager.shape == (3, 4, 23)
    assert (probe.weights - eager).abs().max().item() < 1e-5
    assert (probe.logits - out.logits[0, -1]).abs().max().item() < 1e-4


def test_probe_on_the_real_model_leaves_the_cache_alone(default_model_path):
    loaded = load_model(default_model_path, device="cpu", dtype="float32")
    session = Session(loaded.model)
    ids = loaded.tokenizer.encode(PROSE)
    forward_logits = session.sync(ids)
    k_before = session.cache.k.clone()
    probe = probe_attention(loaded.model, session.cache, session.ids)
    assert (probe.logits - forward_logits).abs().max().item() < 2e-3  # fp32 summation order only
    assert torch.allclose(probe.weights.sum(-1), torch.ones(probe.weights.shape[:2]), atol=1e-5)
    assert torch.equal(session.cache.k, k_before)


def test_explain_names_the_words_behind_the_prediction(predictor):
    e = explain(predictor, "The capital of France is ", session="test-explain")
    assert e.suggestions == predictor.predict("The capital of France is ", 5, session="test-explain")
    assert e.suggestions[0].word == "Paris"
    assert e.layers == list(range(22, 30))  # the last quarter of SmolLM2's 30 layers
    top = [w.word for w in e.attended]
    assert top[0] == "France" and "capital" in top[:3]
    # Every token here is part of a word, so the words' shares add up to all of the attention.
    everything = e.attention.attended_words(k=100)
    assert sum(w.weight for w in everything) == pytest.approx(1.0, abs=1e-4)
    assert [e.attention.text[w.start:w.start + len(w.word)] for w in everything] == [w.word for w in everything]
    predictor.close_session("test-explain")


def test_heatmap_is_a_png(predictor, tmp_path):
    e = explain(predictor, "Alice met Bob at the station. Later that evening, Bob gave a book to ",
                layers=[-1, 0], head=2, session="test-heatmap")
    assert e.layers == [0, 29] and e.head == 2
    path = save_heatmap(e, tmp_path / "attention.png")
    assert path.read_bytes().startswith(PNG_MAGIC)
    import matplotlib.image
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    predictor.close_session("test-heatmap")


@pytest.mark.parametrize("text, options, message", [
    ("   ", {}, "nothing to explain: the text is empty"),
    ("Hello", {"layers": [30]}, "layer 30 is out of range: the model has 30 layers"),
    ("Hello", {"layers": [-31]}, "layer -31 is out of range"),
    ("Hello", {"layers": []}, "no layers chosen"),
    ("Hello", {"head": 9}, "head 9 is out of range: the model has 9 heads"),
])
def test_bad_input_is_a_clear_error(predictor, text, options, message):
    with pytest.raises(ValueError, match=message):
        explain(predictor, text, **options)


def test_cli(default_model_path, tmp_path, capsys):
    png = tmp_path / "out.png"
    assert main(["explain", "The capital of France is", "--png", str(png), "--layers", "-2", "-1",
                 "--n", "3", "--model", str(default_model_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Paris\t")
    assert "attended most (layers 28-29, mean of all heads; the document-start token left out):" in out
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert main(["explain", "Hello", "--head", "12", "--model", str(default_model_path)]) == 2
    assert "error: head 12 is out of range" in capsys.readouterr().err


def test_item_documentation_follows_the_clients_format():
    item = types.CompletionItem(label="Paris", detail="82.4%")
    plain = explained_item(item, 0.824, [("France", 0.364), ("is", 0.301)], markdown=False)
    assert plain.documentation == "Paris: 82.4% likely\nAttended to most: France 36%, is 30%"
    empty = explained_item(types.CompletionItem(label="The"), 0.1, [], markdown=True)
    assert empty.documentation == types.MarkupContent(kind=types.MarkupKind.Markdown, value="**The**: 10.0% likely")


# completionItem/resolve over stdio, with the real model.

@pytest_lsp.fixture(config=ClientServerConfig(
    server_command=[sys.executable, "-m", "nextword", "serve", "--log-level", "WARNING"]))
async def client(lsp_client: LanguageClient):
    capabilities = types.ClientCapabilities(text_document=types.TextDocumentClientCapabilities(
        completion=types.CompletionClientCapabilities(completion_item=types.ClientCompletionItemOptions(
            documentation_format=[types.MarkupKind.Markdown, types.MarkupKind.PlainText]))))
    params = types.InitializeParams(capabilities=capabilities)
    lsp_client.initialize_result = await lsp_client.initialize_session(params)
    yield
    await lsp_client.shutdown_session()


async def complete(client: LanguageClient, uri: str, text: str) -> types.CompletionList:
    for _ in range(600):  # until the model has loaded (it answers with no items before)
        result = await client.text_document_completion_async(types.CompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(0, len(text))))
        if result.items:
            return result
        await asyncio.sleep(0.05)
    raise TimeoutError("no completion items")


async def test_resolve_documents_probability_and_attended_words(client: LanguageClient, predictor):
    uri, text = "file:///why.md", "The capital of France is "
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        text_document=types.TextDocumentItem(uri=uri, language_id="markdown", version=1, text=text)))
    result = await complete(client, uri, text)
    item = result.items[0]
    assert item.label == "Paris" and item.documentation is None  # the typing path does no explaining
    assert client.initialize_result.capabilities.completion_provider.resolve_provider is True
    resolved = await client.completion_item_resolve_async(item)
    expected = explain(predictor, text, session="test-resolve").attended[:3]
    predictor.close_session("test-resolve")
    assert resolved.documentation.kind == types.MarkupKind.Markdown
    first, attended = resolved.documentation.value.split("\n\n")
    assert first == f"**Paris**: {item.data['probability']:.1%} likely" and first.endswith(f"{item.detail} likely")
    assert attended == "Attended to most: " + ", ".join(f"*{w.word}* {w.weight:.0%}" for w in expected)
    assert resolved.label == item.label and resolved.text_edit == item.text_edit

    # After an edit the item is stale: it comes back as it was. So does one with foreign data.
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
        content_changes=[types.TextDocumentContentChangeWholeDocument(text=text + "Paris")]))
    assert await client.completion_item_resolve_async(item) == item
    foreign = types.CompletionItem(label="Paris", data={"uri": uri, "offset": "x"})
    assert await client.completion_item_resolve_async(foreign) == foreign
    bare = types.CompletionItem(label="x")
    assert await client.completion_item_resolve_async(bare) == bare
