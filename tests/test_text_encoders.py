"""Text encoders: parameter names against the reference checkpoint lists, and parity with transformers.

Parity: tiny random PyTorch models (transformers' CLIP / BERT), weights converted to our naming in the test,
loaded strictly, same tokens, fp32. Tolerance: max |ours - ref| <= 1e-4 * max(1, max |ref|).
"""

from __future__ import annotations

import numpy as np
import pytest

from pangu_cli.errors import ModelError

V, W, LAYERS, HEADS, MLP, CTX, PROJ = 64, 32, 3, 4, 128, 12, 16
HF_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "quick_gelu": "quick_gelu"}

# Names relative to the embedder, copied from the MindONE SDXL-base MindSpore key list
# (`conditioner.embedders.1.model.*` and `conditioner.embedders.0.transformer.*`), block / layer 0 only. The list
# spells the CLIP token embedding `embedders.1.model.token_embedding..embedding_table` (a typo in the list);
# its PyTorch twin is `embedders.0.transformer.text_model.embeddings.token_embedding.weight`.
OPENCLIP_KEYS = {
    "token_embedding.embedding_table", "positional_embedding", "text_projection", "logit_scale",
    "ln_final.gamma", "ln_final.beta",
    *(f"transformer.resblocks.0.{k}" for k in (
        "ln_1.gamma", "ln_1.beta", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
        "attn.out_proj.bias", "ln_2.gamma", "ln_2.beta", "mlp.c_fc.weight", "mlp.c_fc.bias",
        "mlp.c_proj.weight", "mlp.c_proj.bias")),
}
HFCLIP_KEYS = {
    "text_model.embeddings.token_embedding.embedding_table",
    "text_model.embeddings.position_embedding.embedding_table",
    "text_model.final_layer_norm.gamma", "text_model.final_layer_norm.beta",
    *(f"text_model.encoder.layers.0.{k}" for k in (
        "self_attn.k_proj.weight", "self_attn.k_proj.bias", "self_attn.v_proj.weight", "self_attn.v_proj.bias",
        "self_attn.q_proj.weight", "self_attn.q_proj.bias", "self_attn.out_proj.weight",
        "self_attn.out_proj.bias", "layer_norm1.gamma", "layer_norm1.beta", "mlp.fc1.weight", "mlp.fc1.bias",
        "mlp.fc2.weight", "mlp.fc2.bias", "layer_norm2.gamma", "layer_norm2.beta")),
}


def assert_close(ours, ref, what):
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != {ref.shape}"
    err = float(np.abs(ours - ref).max())
    tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
    print(f"{what}: max abs err {err:.2e} (tol {tol:.1e})")
    assert err <= tol, f"{what}: max abs err {err:.3e} > {tol:.3e}"
    return err


def randomize(torch, model, seed=0):
    """Non-trivial weights everywhere (LayerNorm gains around 1), so every parameter matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * 0.15
            p.copy_(1.0 + noise if ("LayerNorm" in name or "layer_norm" in name) and name.endswith("weight")
                    else noise)
    return model.eval()


def ms_names(torch, model, state):
    """transformers' names -> ours: LayerNorm weight/bias -> gamma/beta, Embedding weight -> embedding_table."""
    kinds = dict(model.named_modules())
    out = {}
    for key, value in state.items():
        module, leaf = key.rsplit(".", 1)
        if isinstance(kinds[module], torch.nn.LayerNorm):
            leaf = {"weight": "gamma", "bias": "beta"}[leaf]
        elif isinstance(kinds[module], torch.nn.Embedding):
            leaf = "embedding_table"
        out[f"{module}.{leaf}"] = value.detach().numpy().copy()
    return out


def clip_tokens(rng, batch=3, length=CTX, pad_id=0):
    """[sot] + ids + [eot] + padding, eot = V - 1 the largest id (where OpenCLIP pools)."""
    tokens = np.full((batch, length), pad_id, dtype=np.int32)
    for b in range(batch):
        n = int(rng.integers(0, length - 1))
        tokens[b, :n + 2] = [V - 2, *rng.integers(1, V - 2, n), V - 1]
    return tokens


def hf_clip_config(act="gelu", eos=V - 1, **extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=V, hidden_size=W, intermediate_size=MLP, num_hidden_layers=LAYERS,
                          num_attention_heads=HEADS, max_position_embeddings=CTX, hidden_act=HF_ACT[act],
                          layer_norm_eps=1e-5, projection_dim=PROJ, bos_token_id=V - 2, eos_token_id=eos,
                          pad_token_id=0, **extra)


def openclip_state(ref_state):
    """HF CLIPTextModelWithProjection state (our leaf names) -> OpenCLIP layout."""
    s = {k.removeprefix("text_model."): v for k, v in ref_state.items()}
    out = {
        "token_embedding.embedding_table": s["embeddings.token_embedding.embedding_table"],
        "positional_embedding": s["embeddings.position_embedding.embedding_table"],
        "ln_final.gamma": s["final_layer_norm.gamma"],
        "ln_final.beta": s["final_layer_norm.beta"],
        "text_projection": s["text_projection.weight"].T.copy(),  # OpenCLIP: x @ P, P (width, proj)
        "logit_scale": np.array(np.log(1 / 0.07), dtype=np.float32),
    }
    for i in range(LAYERS):
        src, dst = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for leaf in ("weight", "bias"):
            out[dst + f"attn.in_proj_{leaf}"] = np.concatenate(
                [s[src + f"self_attn.{p}_proj.{leaf}"] for p in "qkv"], axis=0)
            out[dst + f"attn.out_proj.{leaf}"] = s[src + f"self_attn.out_proj.{leaf}"]
            out[dst + f"mlp.c_fc.{leaf}"] = s[src + f"mlp.fc1.{leaf}"]
            out[dst + f"mlp.c_proj.{leaf}"] = s[src + f"mlp.fc2.{leaf}"]
        for leaf in ("gamma", "beta"):
            out[dst + f"ln_1.{leaf}"] = s[src + f"layer_norm1.{leaf}"]
            out[dst + f"ln_2.{leaf}"] = s[src + f"layer_norm2.{leaf}"]
    return out


def run(ms, cell, *arrays):
    outs = cell(*[None if a is None else ms.Tensor(a) for a in arrays])
    return [o.asnumpy() for o in outs]


# ---------------------------------------------------------------------------------------------------------------
# Names


def test_openclip_names_match_reference(ms):
    from pangu_cli.models.text_encoders import OpenCLIPTextEncoder

    cell = OpenCLIPTextEncoder(V, W, 1, HEADS, context_length=CTX, proj_dim=PROJ)
    shapes = {k: tuple(p.shape) for k, p in cell.parameters_and_names()}
    assert set(shapes) == OPENCLIP_KEYS
    assert shapes["transformer.resblocks.0.attn.in_proj_weight"] == (3 * W, W)
    assert shapes["transformer.resblocks.0.mlp.c_fc.weight"] == (4 * W, W)
    assert shapes["text_projection"] == (W, PROJ)
    assert shapes["positional_embedding"] == (CTX, W)
    assert shapes["logit_scale"] == ()
    plain = OpenCLIPTextEncoder(V, W, 1, HEADS, context_length=CTX)
    assert {k for k, _ in plain.parameters_and_names()} == OPENCLIP_KEYS - {"text_projection", "logit_scale"}


def test_hfclip_names_match_reference(ms):
    from pangu_cli.models.text_encoders import HFCLIPTextEncoder

    cell = HFCLIPTextEncoder(V, W, 1, HEADS, MLP, CTX)
    assert {k for k, _ in cell.parameters_and_names()} == HFCLIP_KEYS
    projected = HFCLIPTextEncoder(V, W, 1, HEADS, MLP, CTX, proj_dim=PROJ)
    assert {k for k, _ in projected.parameters_and_names()} == HFCLIP_KEYS | {"text_projection.weight"}


def test_bad_config_is_a_model_error(ms):
    from pangu_cli.models.text_encoders import BertTextEncoder, HFCLIPTextEncoder, OpenCLIPTextEncoder

    with pytest.raises(ModelError, match="activation"):
        OpenCLIPTextEncoder(V, W, 1, HEADS, act="relu")
    with pytest.raises(ModelError, match="layer"):
        HFCLIPTextEncoder(V, W, 1, HEADS, MLP, layer="pooled")
    with pytest.raises(ModelError, match="divisible"):
        BertTextEncoder(V, 30, 1, 4, MLP, CTX)


# ---------------------------------------------------------------------------------------------------------------
# Parity


@pytest.mark.parity
@pytest.mark.parametrize("act", ["gelu", "gelu_tanh", "quick_gelu"])
def test_openclip_matches_transformers_clip(ms, torch, act):
    from transformers import CLIPTextModelWithProjection

    from pangu_cli.models.checkpoint import load_into
    from pangu_cli.models.text_encoders import OpenCLIPTextEncoder

    ref = randomize(torch, CLIPTextModelWithProjection(hf_clip_config(act)), seed=1)
    state = openclip_state(ms_names(torch, ref, ref.state_dict()))
    tokens = clip_tokens(np.random.default_rng(0))
    with torch.no_grad():
        out = ref(torch.from_numpy(tokens).long(), output_hidden_states=True)

    cells = {layer: OpenCLIPTextEncoder(V, W, LAYERS, HEADS, context_length=CTX, proj_dim=PROJ, act=act,
                                        layer=layer) for layer in ("penultimate", "last")}
    for cell in cells.values():
        load_into(cell, state)
    penultimate, pooled = run(ms, cells["penultimate"], tokens)
    last, _ = run(ms, cells["last"], tokens)
    assert_close(penultimate, out.hidden_states[-2].numpy(), f"OpenCLIP[{act}] penultimate")
    assert_close(last, out.hidden_states[-1].numpy(), f"OpenCLIP[{act}] last")
    assert_close(pooled, out.text_embeds.numpy(), f"OpenCLIP[{act}] pooled")


@pytest.mark.parity
def test_openclip_parity_detects_wrong_activation(ms, torch):
    """The tolerance is tight enough to tell exact GELU from its tanh approximation."""
    from transformers import CLIPTextModelWithProjection

    from pangu_cli.models.checkpoint import load_into
    from pangu_cli.models.text_encoders import OpenCLIPTextEncoder

    ref = randomize(torch, CLIPTextModelWithProjection(hf_clip_config("gelu")), seed=1)
    tokens = clip_tokens(np.random.default_rng(0))
    with torch.no_grad():
        expected = ref(torch.from_numpy(tokens).long(), output_hidden_states=True).hidden_states[-2].numpy()
    cell = OpenCLIPTextEncoder(V, W, LAYERS, HEADS, context_length=CTX, proj_dim=PROJ, act="gelu_tanh")
    load_into(cell, openclip_state(ms_names(torch, ref, ref.state_dict())))
    with pytest.raises(AssertionError):
        assert_close(run(ms, cell, tokens)[0], expected, "wrong activation")


@pytest.mark.parity
def test_openclip_shorter_sequence_uses_prefix_of_positions(ms, torch):
    from transformers import CLIPTextModelWithProjection

    from pangu_cli.models.checkpoint import load_into
    from pangu_cli.models.text_encoders import OpenCLIPTextEncoder

    ref = randomize(torch, CLIPTextModelWithProjection(hf_clip_config()), seed=2)
    tokens = clip_tokens(np.random.default_rng(1), length=7)
    with torch.no_grad():
        out = ref(torch.from_numpy(tokens).long(), output_hidden_states=True)
    cell = OpenCLIPTextEncoder(V, W, LAYERS, HEADS, context_length=CTX, proj_dim=PROJ)
    load_into(cell, openclip_state(ms_names(torch, ref, ref.state_dict())))
    context, pooled = run(ms, cell, tokens)
    assert_close(context, out.hidden_states[-2].numpy(), "OpenCLIP L=7 penultimate")
    assert_close(pooled, out.text_embeds.numpy(), "OpenCLIP L=7 pooled")


@pytest.mark.parity
@pytest.mark.parametrize("layer", ["last", "penultimate"])
def test_hfclip_matches_transformers_clip_text_model(ms, torch, layer):
    from transformers import CLIPTextModel

    from pangu_cli.models.checkpoint import load_into
    from pangu_cli.models.text_encoders import HFCLIPTextEncoder

    # eos_token_id 2 selects transformers' legacy pooling: argmax of the ids, as ours with eos_token_id=None.
    ref = randomize(torch, CLIPTextModel(hf_clip_config("quick_gelu", eos=2)), seed=3)
    state = {"text_model." + k: v for k, v in ms_names(torch, ref, ref.state_dict()).items()}
    tokens = clip_tokens(np.random.default_rng(2))
    with torch.no_grad():
        out = ref(torch.from_numpy(tokens).long(), output_hidden_states=True)

    cell = HFCLIPTextEncoder(V, W, LAYERS, HEADS, MLP, CTX, act="quick_gelu", layer=layer)
    load_into(cell, state)
    context, pooled = run(ms, cell, tokens)
    expected = out.last_hidden_state if layer == "last" else out.hidden_states[-2]
    assert_close(context, expected.numpy(), f"HF CLIP {layer}")
    assert_close(pooled, out.pooler_output.numpy(), "HF CLIP pooled (argmax)")


@pytest.mark.parity
def test_hfclip_with_projection_pools_at_first_eos(ms, torch):
    """A BERT-style vocabulary: [CLS]=2 ... [SEP]=3, padding 0; [SEP] is not the largest id."""
    from transformers import CLIPTextModelWithProjection

    from pangu_cli.models.checkpoint import load_into
    from pangu_cli.models.text_encoders import HFCLIPTextEncoder

    cls_id, sep_id = 2, 3
    ref = randomize(torch, CLIPTextModelWithProjection(hf_clip_config("gelu", eos=sep_id)), seed=4)
    rng = np.random.default_rng(3)
    tokens = np.zeros((3, CTX), dtype=np.int32)
    for b, n in enumerate((0, 4, CTX - 2)):
        tokens[b, :n + 2] = [cls_id, *rng.integers(4, V, n), sep_id]
    with torch.no_grad():
        out = ref(torch.from_numpy(tokens).long())

    cell = HFCLIPTextEncoder(V, W, LAYERS, HEADS, MLP, CTX, act="gelu", proj_dim=PROJ, eos_token_id=sep_id)
    load_into(cell, ms_names(torch, ref, ref.state_dict()))
    context, pooled = run(ms, cell, tokens)
    assert_close(context, out.last_hidden_state.numpy(), "HF CLIP+proj last")
    assert_close(pooled, out.text_embeds.numpy(), "HF CLIP+proj pooled (first eos)")


@pytest.mark.parity
@pytest.mark.parametrize("with_pooler", [False, True])
def test_bert_matches_transformers_bert(ms, torch, with_pooler):
    from transformers import BertConfig, BertModel

    from pangu_cli.models.checkpoint import load_into
    from pangu_cli.models.text_encoders import BertTextEncoder

    length, max_pos = 10, 16
    cfg = BertConfig(vocab_size=V, hidden_size=W, num_hidden_layers=2, num_attention_heads=HEADS,
                     intermediate_size=MLP, max_position_embeddings=max_pos, type_vocab_size=2,
                     hidden_act="gelu", layer_norm_eps=1e-12, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    ref = randomize(torch, BertModel(cfg, add_pooling_layer=with_pooler), seed=5)
    rng = np.random.default_rng(4)
    ids = rng.integers(5, V, (3, length)).astype(np.int32)
    mask = np.ones((3, length), dtype=np.int32)
    for b, n in enumerate((length, 6, 2)):  # a full row, a half-padded row, a mostly padded row
        ids[b, n:] = 0
        mask[b, n:] = 0
    types = (rng.random((3, length)) < 0.5).astype(np.int32)
    with torch.no_grad():
        out = ref(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long(),
                  token_type_ids=torch.from_numpy(types).long())
        plain = ref(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long())

    cell = BertTextEncoder(V, W, 2, HEADS, MLP, max_pos, act="gelu", pooler=with_pooler)
    load_into(cell, ms_names(torch, ref, ref.state_dict()))
    hidden, pooled = run(ms, cell, ids, mask, types)
    assert_close(hidden, out.last_hidden_state.numpy(), "BERT last_hidden_state (padded batch)")
    expected_pooled = out.pooler_output if with_pooler else out.last_hidden_state[:, 0]
    assert_close(pooled, expected_pooled.numpy(), f"BERT pooled (pooler={with_pooler})")
    hidden, _ = run(ms, cell, ids, mask, None)
    assert_close(hidden, plain.last_hidden_state.numpy(), "BERT default token types")


@pytest.mark.parity
def test_bert_padding_mask_matters(ms, torch):
    """Changing padded tokens must not change real positions; dropping the mask must."""
    from pangu_cli.models.text_encoders import BertTextEncoder

    cell = BertTextEncoder(V, W, 2, HEADS, MLP, 16)
    ids = np.array([[2, 10, 11, 12, 3, 0, 0, 0]], dtype=np.int32)
    mask = (ids != 0).astype(np.int32)
    noisy = ids.copy()
    noisy[0, 5:] = [40, 41, 42]
    a = run(ms, cell, ids, mask, None)[0][:, :5]
    b = run(ms, cell, noisy, mask, None)[0][:, :5]
    c = run(ms, cell, noisy, None, None)[0][:, :5]
    assert np.abs(a - b).max() < 1e-5
    assert np.abs(a - c).max() > 1e-3
