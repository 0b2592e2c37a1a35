"""Two CPU processes under torchrun (gloo): DDP and FSDP2 training through the Trainer."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from hydra_umm.train.checkpoint import latest, load_checkpoint
from hydra_umm.train.distributed import DistEnv, checkpoint_activations, data_parallel, init_distributed

COMMON = """
import itertools, torch
from torch import nn
from hydra_umm.data.mixture import BatchStream
from hydra_umm.train.config import LearningRates, TrainConfig
from hydra_umm.train.engine import Trainer
from hydra_umm.train.schedule import build_optimizer

STEPS = 4

class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 16), nn.Tanh())
        self.decoder = nn.Linear(16, 1)

    def forward(self, batch):
        return {"loss": (self.decoder(self.encoder(batch["x"])) - batch["y"]).pow(2).mean()}

def batch(i):
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(i))
    return {"x": x, "y": x.sum(1, keepdim=True)}

def train(model, components, stream, out_dir, env):
    cfg = TrainConfig(out_dir=out_dir, steps=STEPS, warmup=1, log_every=2, ckpt_every=0, num_workers=0,
                      lr=LearningRates(default=1e-2))
    optimizer, scheduler = build_optimizer(components, cfg)
    return Trainer(model, optimizer, scheduler, stream, cfg, env=env).fit()
"""

WORKER = COMMON + """
import sys
from pathlib import Path
from hydra_umm.train.distributed import data_parallel, destroy_distributed, init_distributed, shard

out = Path(sys.argv[1])
env = init_distributed(use_cuda=False)
assert env.world_size == 2
rank_stream = lambda: BatchStream(lambda p: (batch(2 * i + env.rank) for i in itertools.count(p)))

torch.manual_seed(env.rank)  # different weights per rank: DDP must start every rank from rank 0's
model = MLP()
train(data_parallel(model, env), {"encoder": model.encoder, "decoder": model.decoder}, rank_stream(),
      str(out / "ddp"), env)
torch.save(model.state_dict(), out / f"ddp_rank{env.rank}.pt")

torch.manual_seed(0)  # FSDP2 keeps each rank's shard of its own initial weights
model = MLP()
shard(model, [model.encoder])
train(model, {"encoder": model.encoder, "decoder": model.decoder}, rank_stream(), str(out / "fsdp"), env)
full = {k: v.full_tensor() for k, v in model.state_dict().items()}  # gathers the shards
torch.save(full, out / f"fsdp_rank{env.rank}.pt")
destroy_distributed()
"""


@pytest.fixture(scope="module")
def torchrun_outputs(tmp_path_factory):
    out = tmp_path_factory.mktemp("torchrun")
    script = out / "worker.py"
    script.write_text(WORKER)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", str(script), str(out)],
        capture_output=True, text=True, timeout=180, env=env,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def reference_weights(tmp_path) -> dict:
    """One process on the concatenation of both ranks' batches: the same mean gradient."""
    ns = {}
    exec(COMMON, ns)
    torch.manual_seed(0)
    model = ns["MLP"]()
    stream = ns["BatchStream"](lambda p: (
        {k: torch.cat([ns["batch"](2 * i)[k], ns["batch"](2 * i + 1)[k]]) for k in ("x", "y")}
        for i in __import__("itertools").count(p)))
    ns["train"](model, {"encoder": model.encoder, "decoder": model.decoder}, stream, str(tmp_path), DistEnv())
    return model.state_dict()


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_both_ranks_end_with_the_same_weights_as_one_process(torchrun_outputs, tmp_path, mode):
    rank0, rank1 = (torch.load(torchrun_outputs / f"{mode}_rank{r}.pt") for r in range(2))
    reference = reference_weights(tmp_path)
    initial = (torch.manual_seed(0), nn.Linear(4, 16))[1].weight
    assert not torch.allclose(rank0["encoder.0.weight"], initial, atol=1e-3)  # it trained
    checkpoint = load_checkpoint(latest(torchrun_outputs / mode))["model"]  # written by rank 0
    assert checkpoint.keys() == reference.keys()
    for k in reference:
        torch.testing.assert_close(rank0[k], rank1[k], rtol=0, atol=0)
        torch.testing.assert_close(rank0[k], reference[k], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(checkpoint[k], rank0[k], rtol=0, atol=0)


def test_single_process_needs_no_process_group():
    env = init_distributed(use_cuda=False)
    assert env == DistEnv() and env.is_main
    model = nn.Linear(2, 2)
    assert data_parallel(model, env) is model


def test_activation_checkpointing_keeps_outputs_gradients_and_state_keys():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(4, 8), nn.Sequential(nn.Linear(8, 8), nn.GELU()), nn.Linear(8, 1))
    wrapped = nn.Sequential(nn.Linear(4, 8), nn.Sequential(nn.Linear(8, 8), nn.GELU()), nn.Linear(8, 1))
    wrapped.load_state_dict(plain.state_dict())
    checkpoint_activations(wrapped, (nn.GELU,))
    x = torch.randn(3, 4)
    plain(x).sum().backward()
    wrapped(x).sum().backward()
    assert "CheckpointWrapper" in repr(wrapped) and wrapped.state_dict().keys() == plain.state_dict().keys()
    for p, q in zip(plain.parameters(), wrapped.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    with pytest.raises(ValueError, match="no module of types"):
        checkpoint_activations(plain, (nn.Conv2d,))


def test_the_recipes_train_on_two_processes(tmp_path):
    """`hydra-umm train` under torchrun: the tokenizer with DDP, then HYDRA with its LLM sharded by
    FSDP2 (ranks whose batches hold different tasks must still agree), saved whole by rank 0."""
    from hydra_umm.inference import HydraPipeline

    torchrun = Path(sys.executable).with_name("torchrun")
    common = ["--config", "tiny", "data=shapes:40", "train.steps=2", "train.warmup=1", "train.batch_size=2",
              "train.num_workers=0", "train.val_every=0", "tokenizer.lambda_lpips=0", "umm.flow.steps=2"]
    for what, extra in (("tokenizer", ["stage=1", f"train.out_dir={tmp_path / 'tok'}"]),
                        ("umm", ["stage=II", f"train.out_dir={tmp_path / 'umm'}", f"umm.tokenizer_path={tmp_path / 'tok' / 'model'}"])):
        result = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "hydra_umm.cli",
                                 "train", what, *common, *extra], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    (image,) = HydraPipeline.from_pretrained(tmp_path / "umm" / "model").generate(["a red circle"], steps=2)
    assert image.size == (64, 64)
