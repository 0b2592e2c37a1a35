"""HydraModel: batch layout, losses against reference formulas, stages and frozen parts, caption
dropout, save/load, and a tiny model that measurably learns both tasks."""

import copy
import json

import pytest
import torch

from hydra_umm import flow
from hydra_umm.config import load_config, to_dict
from hydra_umm.models.hydra import HydraModel, load_tokenizer
from hydra_umm.models.llm import IGNORE
from hydra_umm.models.text_tokenizer import train_text_tokenizer

from square_samples import TEXTS, gen, square, und


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = load_config("tiny", ["tokenizer.image_size=32"])
    return HydraModel(cfg, train_text_tokenizer(TEXTS * 4, cfg.llm.vocab_size))


def test_batch_and_forward_shapes(model):
    batch = model.collate([gen("red"), und("blue"), {"kind": "text", "image": None, "prompt": "a", "target": "red"}])
    N = model.num_image_tokens
    assert N == 16
    assert batch.images.shape == (2, 3, 32, 32) and batch.noised.tolist() == [True, False]
    lay = batch.layout
    assert lay.input_ids.shape == lay.labels.shape == lay.valid.shape == (3, lay.input_ids.shape[1])
    assert lay.visual.sum(dim=1).tolist() == [N, N, 0]
    ids = model.ids
    gen_row = lay.input_ids[0][lay.valid[0]].tolist()
    assert gen_row[-N - 2] == ids["vs"] and gen_row[-1] == ids["ve"]  # caption <vs> image <ve>
    und_row = lay.input_ids[1][lay.valid[1]].tolist()
    assert und_row[0] == ids["vs"] and und_row[N + 1] == ids["ve"] and und_row[-1] == ids["eos"]
    assert lay.labels[0].eq(IGNORE).all()  # no text loss on a generation sample
    targets = lay.labels[1][lay.labels[1] != IGNORE].tolist()
    assert targets == model.text_tokenizer("blue", add_special_tokens=False).input_ids + [ids["eos"]]
    z = model.latents(batch.images)
    assert z.shape == (2, N, model.cfg.tokenizer.latent_dim)
    assert model.visual_tokens(z, torch.ones(2)).shape == (2, N, model.cfg.llm.hidden_size)
    out = model(batch, generator=torch.Generator().manual_seed(0))
    assert set(out) == {"loss", "loss_ntp", "loss_flow"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.values())
    assert torch.allclose(out["loss"], out["loss_ntp"] + model.cfg.umm.lambda_flow * out["loss_flow"])


def test_bad_samples_are_refused_with_clear_errors(model):
    with pytest.raises(ValueError, match="kind must be one of"):
        model.collate([{"kind": "edit", "image": square("red"), "prompt": "", "target": ""}])
    with pytest.raises(ValueError, match="needs an image"):
        model.collate([{"kind": "gen", "image": None, "prompt": "a", "target": ""}])
    with pytest.raises(ValueError, match=r"image must be \(3, 32, 32\)"):
        model.collate([{"kind": "und", "image": torch.zeros(3, 64, 64), "prompt": "a", "target": "b"}])
    with pytest.raises(ValueError, match="unknown stage"):
        model.set_stage("IV")


def test_loss_ntp_equals_the_lm_loss_on_target_tokens_only(model):
    sample = {"kind": "text", "image": None, "prompt": "a red", "target": "square"}
    batch = model.collate([sample])
    with torch.no_grad():
        ours = model(batch)["loss_ntp"]
        reference = model.llm(input_ids=batch.layout.input_ids, labels=batch.layout.labels).loss
    assert torch.allclose(ours, reference, atol=1e-6)
    n_targets = int((batch.layout.labels != IGNORE).sum())
    assert n_targets == len(model.text_tokenizer("square", add_special_tokens=False).input_ids) + 1
    # a text sample without a prompt: its first token is predicted from nothing, beside longer rows too
    # (left padding put a pad token before it, which then "predicted" it)
    text = {"kind": "text", "image": None, "prompt": "", "target": "a red square"}
    longer = {"kind": "text", "image": None, "prompt": "a square on black with a red square", "target": "red"}
    with torch.no_grad():
        alone = model(model.collate([text]))["loss_ntp"]
        pair = model.collate([text, longer])
        beside = model.next_token_loss(model.sequence_hidden_states(pair.layout, None)[:1], _first_row(pair.layout))
    assert torch.allclose(alone, beside, atol=1e-6)


def _first_row(lay):
    return type(lay)(**{k: v[:1] for k, v in vars(lay).items()})


def test_loss_flow_is_the_velocity_mse_of_the_generation_blocks_only(model, monkeypatch):
    """At initialisation the head predicts 0, so loss_flow = mean (z - x0)^2 over the gen block,
    with t and x0 drawn in that order from the given generator."""
    batch = model.collate([und("red"), gen("green")], caption_dropout=0.0)
    with torch.no_grad():
        out = model(batch, generator=torch.Generator().manual_seed(3))
        z = model.latents(batch.images)
    g = torch.Generator().manual_seed(3)
    fc = model.cfg.umm.flow
    flow.sample_t(2, fc.t_sampling, fc.t_mean, fc.t_std, generator=g)
    x0 = torch.randn(z.shape, generator=g)
    assert torch.allclose(out["loss_flow"], (z[1] - x0[1]).pow(2).mean(), rtol=1e-5)
    # the sign: a head that always says 0.5 is scored against z - x0 (not x0 - z)
    half = lambda hidden, t: torch.full((*hidden.shape[:-1], z.shape[-1]), 0.5)  # noqa: E731
    monkeypatch.setattr(model.vision_head, "forward", half)
    with torch.no_grad():
        out = model(batch, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(out["loss_flow"], (0.5 - (z[1] - x0[1])).pow(2).mean(), rtol=1e-5)


def test_a_generated_block_enters_as_its_noised_latent_and_the_head_reads_its_time(model, monkeypatch):
    """The generated image's visual tokens are those of x_t = t z + (1 - t) x0 at its t (the understood
    image's those of z at t = 1), and the vision head is given that t."""
    batch = model.collate([und("red"), gen("green")], caption_dropout=0.0)
    fc = model.cfg.umm.flow
    with torch.no_grad():
        frames = model.frame_inputs(batch.blocks, torch.Generator().manual_seed(3))
        z = model.latents(batch.images)
        g = torch.Generator().manual_seed(3)
        t = flow.sample_t(2, fc.t_sampling, fc.t_mean, fc.t_std, generator=g)
        x0 = torch.randn(z.shape, generator=g)
        x_t = t[1] * z[1:] + (1 - t[1]) * x0[1:]
        assert torch.allclose(frames["visual"][1:], model.visual_tokens(x_t, t[1:]), atol=1e-5)
        assert torch.allclose(frames["visual"][:1], model.visual_tokens(z[:1], torch.ones(1)), atol=1e-5)
        seen, head = [], model.vision_head.forward
        monkeypatch.setattr(model.vision_head, "forward", lambda hidden, time: seen.append(time) or head(hidden, time))
        model(batch, generator=torch.Generator().manual_seed(3))
    assert len(seen) == 1 and torch.equal(seen[0], t[1:])


def test_understanding_is_clean_and_the_timestep_reaches_the_visual_tokens(model):
    batch = model.collate([und("red"), und("blue")])
    with torch.no_grad():
        a = model(batch, generator=torch.Generator().manual_seed(0))
        b = model(batch, generator=torch.Generator().manual_seed(1))
        assert torch.equal(a["loss_ntp"], b["loss_ntp"]) and a["loss_flow"] == 0  # no noise in understanding
        z = model.latents(batch.images)
        assert not torch.allclose(model.visual_tokens(z, torch.ones(2)), model.visual_tokens(z, torch.full((2,), 0.3)))
        gen_batch = model.collate([gen("red")], caption_dropout=0.0)
        c = model(gen_batch, generator=torch.Generator().manual_seed(0))
        d = model(gen_batch, generator=torch.Generator().manual_seed(1))
        assert c["loss_flow"] != d["loss_flow"] and c["loss_ntp"] == 0


def test_caption_dropout_replaces_only_generation_captions(model):
    empty = model.layout([model.generation_prefix("")]).valid.sum().item() + model.num_image_tokens + 1
    samples = [gen("red"), und("red"), gen("blue")]
    kept = model.collate(samples, caption_dropout=0.0).layout.valid.sum(dim=1)
    dropped = model.collate(samples, caption_dropout=1.0).layout.valid.sum(dim=1)
    assert kept[0] > empty and dropped[0] == empty and dropped[2] == empty
    assert dropped[1] == kept[1]  # the understanding prompt is untouched
    many = model.collate([gen("red")] * 400, caption_dropout=0.25, generator=torch.Generator().manual_seed(0))
    rate = (many.layout.valid.sum(dim=1) == empty).float().mean().item()
    assert 0.18 < rate < 0.32
    # the default comes from the config
    assert model.cfg.umm.caption_dropout == 0.1


def _grads(model, stage):
    model.set_stage(stage)
    model.zero_grad(set_to_none=True)
    batch = model.collate([gen("red"), und("blue")], caption_dropout=0.0)
    model(batch, generator=torch.Generator().manual_seed(0))["loss"].backward()
    return {name: [p.grad for p in ps] for name, ps in model.components().items()}


def test_a_text_only_batch_still_gives_every_trainable_parameter_a_gradient(model):
    model.set_stage("III")
    model.zero_grad(set_to_none=True)
    text = {"kind": "text", "image": None, "prompt": "a red", "target": "square"}
    model(model.collate([text]))["loss"].backward()  # as every rank of sharded training must
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.set_stage("II")
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("stage", ["I", "II", "III"])
def test_gradients_reach_exactly_what_each_stage_trains(model, stage):
    grads = _grads(model, stage)
    trains_llm = stage != "I"
    for name in ("sem_vit", "projector", "vision_head"):
        assert all(g is not None for g in grads[name]), name
        assert sum(g.abs().sum() for g in grads[name]) > 0, name
    assert all((g is not None) == trains_llm for g in grads["llm"])
    if trains_llm:
        assert sum(g.abs().sum() for g in grads["llm"]) > 0
    tok = model.tokenizer
    frozen = [p for m in tok.gen_vit_modules() for p in m.parameters()] + list(tok.bottleneck.compress.parameters())
    frozen += list(tok.decoder.parameters()) + list(tok.teacher.parameters()) + list(tok.discriminator.parameters())
    assert frozen and all(p.grad is None and not p.requires_grad for p in frozen)
    groups = model.param_groups()
    assert set(groups) == {"sem_vit", "projector", "vision_head", "llm"}
    assert (len(groups["llm"]) > 0) == trains_llm
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for ps in groups.values() for p in ps}
    model.set_stage("II")
    model.zero_grad(set_to_none=True)


def test_vision_head_initial_output_is_exactly_zero(model):
    hidden = torch.randn(3, model.num_image_tokens, model.cfg.llm.hidden_size)
    v = model.vision_head(hidden, torch.rand(3))
    assert v.shape == (3, model.num_image_tokens, model.cfg.tokenizer.latent_dim)
    assert torch.equal(v, torch.zeros_like(v))


def test_save_and_load_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path)
    loaded = HydraModel.from_pretrained(tmp_path)
    assert to_dict(loaded.cfg) == to_dict(model.cfg)
    assert loaded.text_tokenizer.get_vocab() == model.text_tokenizer.get_vocab()
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    batch = model.collate([gen("red"), und("blue")], caption_dropout=0.0)
    with torch.no_grad():
        a = model(batch, generator=torch.Generator().manual_seed(0))["loss"]
        b = loaded(batch, generator=torch.Generator().manual_seed(0))["loss"]
    assert torch.equal(a, b)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        HydraModel.from_pretrained(tmp_path / "nothing")
    with pytest.raises(ValueError, match="holds a unified model .*, not a tokenizer"):  # e.g. as umm.tokenizer_path
        load_tokenizer(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["umm"]["head_width"] *= 2  # config.json and the weights no longer agree
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="model.safetensors does not load into the HydraModel its config.json describes"):
        HydraModel.from_pretrained(tmp_path)


def test_a_tiny_hydra_overfits_a_few_samples(model):
    """Both losses, measured with fixed draws of t and noise, fall by at least half."""
    torch.manual_seed(0)
    student = copy.deepcopy(model)
    batch = student.collate([gen("red"), gen("blue"), und("red"), und("blue")], caption_dropout=0.0)

    def evaluate():
        with torch.no_grad():
            out = student(batch, generator=torch.Generator().manual_seed(123))
        return out["loss_ntp"].item(), out["loss_flow"].item()

    ntp0, flow0 = evaluate()
    params = [p for ps in student.param_groups().values() for p in ps]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        loss = student(batch, generator=g)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    ntp1, flow1 = evaluate()
    assert ntp1 < 0.5 * ntp0, (ntp0, ntp1)
    assert flow1 < 0.5 * flow0, (flow0, flow1)


def test_forward_takes_the_data_loaders_column_batches(model):
    """The training engine hands the model ``collate_items`` dicts; they give the same losses, with
    caption dropout only in training mode."""
    from hydra_umm.data.datasets import collate_items

    items = [gen("red"), und("blue"), {"kind": "text", "image": None, "prompt": "a", "target": "red"}]
    model.eval()
    with torch.no_grad():
        ours = model(collate_items(items), generator=torch.Generator().manual_seed(0))
        reference = model(model.collate(items, caption_dropout=0.0), generator=torch.Generator().manual_seed(0))
    model.train()
    assert all(torch.equal(ours[k], reference[k]) for k in reference)
    other_caption = [dict(items[0], prompt="a small purple square")]
    model = copy.deepcopy(model)
    with torch.no_grad():  # a head that is not exactly zero, so that the caption can matter
        for p in model.vision_head.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    model.cfg.umm.caption_dropout = 1.0  # (a copy's config) every caption dropped: the prompt no longer matters
    a, b = (model(collate_items(x), generator=torch.Generator().manual_seed(0)) for x in (items[:1], other_caption))
    assert torch.equal(a["loss"], b["loss"])
    model.eval()  # ... but only in training mode
    with torch.no_grad():
        a, b = (model(collate_items(x), generator=torch.Generator().manual_seed(0)) for x in (items[:1], other_caption))
    model.train()
    assert not torch.equal(a["loss"], b["loss"])
    with pytest.raises(ValueError, match="missing"):
        model({"kind": ["gen"]})
