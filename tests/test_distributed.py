"""Training and evaluation on several processes: gloo on the CPU, started by torchrun.

The multi-process tests start real process groups the way users do, with
``python -m torch.distributed.run --standalone``. Some of them run this file as the
worker script. Its ``checks`` mode runs the library-level checks inside a two-process
group and writes each rank's results as JSON. Its ``cli`` mode runs ``mnist-fusion``
with a fault that these tests request through environment variables.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from conftest import make_digit_images, write_tiny_mnist
from hypothesis import given
from hypothesis import strategies as st
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from mnist_fusion import checkpoint, distributed
from mnist_fusion.cli import METRIC_NAMES
from mnist_fusion.data import BatchLoader, MNISTSum, RandomDigits, TensorFusionDataset
from mnist_fusion.distributed import ShardSampler, check_training_split
from mnist_fusion.losses import FusionLoss
from mnist_fusion.metrics import FusionMetrics
from mnist_fusion.models import ConvEncoderConfig, FusionModel, FusionModelConfig
from mnist_fusion.training import evaluate, fit

ROOT = Path(__file__).resolve().parents[1]
SMALL = FusionModelConfig(encoder=ConvEncoderConfig(channels=(8, 16)))
TEST_ITEMS = 301  # Odd, so two shards differ in length and padding would show.
TORCHRUN_VARIABLES = (
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR",
    "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_USE_AGENT_STORE",
)  # fmt: skip
# Read by this file's `cli` mode only: the rank that fails, in which epoch, and whether
# each rank takes its rank as --seed.
FAIL_RANK = "MNIST_FUSION_TEST_FAIL_RANK"
FAIL_EPOCH = "MNIST_FUSION_TEST_FAIL_EPOCH"
SEED_FROM_RANK = "MNIST_FUSION_TEST_SEED_FROM_RANK"

# How far a two-process run's figures may lie from a one-process run with the same
# global batch. The two see the same batches in the same order from the same initial
# weights. They differ because each process computes BatchNorm statistics over its half
# of a batch, and because floating-point sums add in another order. On the tiny data these moved
# sum_mae by about 0.003 and sum_r2 by about 0.002 after two epochs, and no fraction
# by one test image; the bounds leave room for other CPUs and thread libraries.
TOLERANCE = {
    "digit_accuracy": 0.02,
    "sum_accuracy": 0.02,
    "consistency": 0.02,
    "sum_r2": 0.05,
    "sum_mae": 0.05,
}
on_linux = pytest.mark.skipif(
    not Path("/proc/self/cmdline").exists(), reason="the process scan reads /proc"
)


def eval_data(count: int = TEST_ITEMS) -> TensorFusionDataset:
    labels = torch.arange(count) % 10
    side = torch.stack([RandomDigits(count, seed=5)[i] for i in range(count)])
    return TensorFusionDataset(make_digit_images(labels, seed=1), labels, side)


def train_data(count: int) -> TensorFusionDataset:
    labels = torch.arange(count) % 10
    side = torch.stack([RandomDigits(count, seed=6)[i] for i in range(count)])
    return TensorFusionDataset(make_digit_images(labels, seed=2), labels, side)


def small_model(seed: int = 0) -> FusionModel:
    torch.manual_seed(seed)
    return FusionModel(SMALL)


def process_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES}
    src = str(ROOT / "src")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    if Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"  # Keep gloo's connections on loopback.
    return env


def launch(command: list[str], **extra_env: str) -> subprocess.CompletedProcess[str]:
    """Run ``command`` to its end, in a session of its own so a hang can be ended."""
    process = subprocess.Popen(
        command,
        env={**process_env(), **extra_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{command} did not end; its stderr:\n{stderr}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def torchrun(*args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    runner = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return launch([*runner, "--nproc-per-node", "2", *args], **extra_env)


def train_args(root: Path, out: Path) -> list[str]:
    return [
        "train", "--root", str(root), "--out", str(out), "--epochs", "2",
        "--batch-size", "60", "--device", "cpu",
    ]  # fmt: skip


def processes_with(marker: str) -> list[int]:
    """Return the ids of live processes whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command_line = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # Ended meanwhile, or not ours to read.
        if marker.encode() in command_line:
            found.append(int(entry.name))
    return found


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def same_weights(first: Path, second: Path) -> bool:
    first_state = checkpoint.load(first).state_dict()
    second_state = checkpoint.load(second).state_dict()
    return first_state.keys() == second_state.keys() and all(
        torch.equal(tensor, second_state[name]) for name, tensor in first_state.items()
    )


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_tiny_mnist(tmp_path_factory.mktemp("mnist_301"), test=TEST_ITEMS)


@pytest.fixture(scope="module")
def two_processes(data_root, tmp_path_factory):
    """A two-process `train` run under torchrun: its result and output folder."""
    out = tmp_path_factory.mktemp("two_processes")
    return torchrun("-m", "mnist_fusion.cli", *train_args(data_root, out)), out


@pytest.fixture(scope="module")
def one_process(data_root, tmp_path_factory):
    """The same `train` run in one plain process, with the same global batch size."""
    out = tmp_path_factory.mktemp("one_process")
    return launch([sys.executable, "-m", "mnist_fusion.cli", *train_args(data_root, out)]), out


@pytest.fixture(scope="module")
def checks(tmp_path_factory) -> dict[int, dict]:
    """Run this file's `checks` mode on two processes; return each rank's results."""
    out = tmp_path_factory.mktemp("checks")
    result = torchrun(__file__, "checks", str(out))
    assert result.returncode == 0, result.stderr
    return {rank: read_json(out / f"results_{rank}.json") for rank in (0, 1)}


@pytest.fixture
def one_rank_group(monkeypatch):
    """A gloo process group of this process alone, with an in-memory store."""
    if Path("/sys/class/net/lo").exists():
        monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


# Sharding within one process.


def rank_indices(loader: BatchLoader) -> list[list[int]]:
    return [batch["index"].tolist() for batch in loader]


@given(
    length=st.integers(1, 60),
    per_rank=st.integers(1, 6),
    world_size=st.integers(1, 4),
    shuffle=st.booleans(),
)
def test_shards_partition_batches(length, per_rank, world_size, shuffle):
    data = eval_data(length)
    batch_size = per_rank * world_size
    single = rank_indices(BatchLoader(data, batch_size=batch_size, shuffle=shuffle, seed=3))
    shards = [
        rank_indices(
            BatchLoader(
                data, batch_size=batch_size, shuffle=shuffle, seed=3, rank=r, world_size=world_size
            )
        )
        for r in range(world_size)
    ]

    steps = [
        sorted(i for shard in shards if step < len(shard) for i in shard[step])
        for step in range(len(single))
    ]
    assert steps == [sorted(batch) for batch in single]


@given(length=st.integers(1, 60), per_rank=st.integers(1, 6), world_size=st.integers(1, 4))
def test_shard_length(length, per_rank, world_size):
    data = eval_data(length)
    for r in range(world_size):
        loader = BatchLoader(data, batch_size=per_rank * world_size, rank=r, world_size=world_size)

        assert len(loader) == len(list(loader))


def test_shards_cover_once():
    data = eval_data()
    indices = [
        i
        for r in range(2)
        for batch in rank_indices(BatchLoader(data, batch_size=10, rank=r, world_size=2))
        for i in batch
    ]

    assert sorted(indices) == list(range(TEST_ITEMS))


def test_one_shard_is_unsharded():
    data = eval_data(50)
    sharded = BatchLoader(data, batch_size=8, shuffle=True, seed=4, rank=0, world_size=1)

    assert rank_indices(sharded) == rank_indices(
        BatchLoader(data, batch_size=8, shuffle=True, seed=4)
    )


def test_side_inputs_unchanged(data_root):
    per_item = MNISTSum(data_root, train=False, seed=7)
    data = per_item.as_tensors()
    pairs = [
        (int(index), int(side))
        for r in range(2)
        for batch in BatchLoader(data, batch_size=40, shuffle=True, seed=1, rank=r, world_size=2)
        for index, side in zip(batch["index"], batch["side"], strict=True)
    ]

    assert all(side == int(per_item[index]["side"]) for index, side in pairs)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"rank": 2, "world_size": 2}, r"`rank` to be an integer in \[0, 1\] .* got 2"),
        ({"rank": 0, "world_size": 0}, "`world_size` to be a positive integer, but got 0"),
        ({"rank": 0, "world_size": 4, "batch_size": 10}, "batch_size 10 .* such as 8 or 12"),
        ({"rank": 0, "world_size": 4, "batch_size": 3}, "multiple of 4, such as 4\\."),
    ],
    ids=["rank", "world_size", "batch_size", "small_batch_size"],
)
def test_batch_loader_rejects(options, match):
    options = {"batch_size": 8, **options}

    with pytest.raises(ValueError, match=match):
        BatchLoader(eval_data(10), **options)


@pytest.mark.parametrize(
    ("length", "batch_size", "world_size", "match"),
    [
        (3, 4, 4, "world size 4 is larger than the training set of 3 item.*at most 3 processes"),
        (100, 5, 2, "batch_size 5 does not divide by the world size 2.*such as 4 or 6"),
        (41, 10, 2, "last batch of the 41 training items contains 1 item.*fewer than the 2"),
    ],
    ids=["world_size", "batch_size", "last_batch"],
)
def test_split_rejects(length, batch_size, world_size, match):
    with pytest.raises(ValueError, match=match):
        check_training_split(length, batch_size, world_size)


def test_split_drop_last():
    check_training_split(41, 10, 2, drop_last=True)


def test_shard_sampler_partition():
    shards = [list(ShardSampler(range(TEST_ITEMS), rank=r, world_size=3)) for r in range(3)]

    assert sorted(i for shard in shards for i in shard) == list(range(TEST_ITEMS))


def test_shard_sampler_length():
    assert [len(ShardSampler(range(TEST_ITEMS), rank=r, world_size=2)) for r in (0, 1)] == [
        151,
        150,
    ]


def test_shard_sampler_rank():
    with pytest.raises(ValueError, match=r"`rank` to be an integer in \[0, 1\]"):
        ShardSampler(range(5), rank=2, world_size=2)


# Evaluation loaders that would not count every item once.


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"shuffle": False}, "DistributedSampler repeats samples .* 2 processes the same share"),
        ({"shuffle": False, "drop_last": True}, "DistributedSampler leaves out samples"),
        ({"shuffle": True}, "DistributedSampler shuffles; .*ShardSampler"),
    ],
    ids=["pads", "drops", "shuffles"],
)
def test_evaluate_rejects_distributed_sampler(options, match):
    data = eval_data()
    sampler = DistributedSampler(data, num_replicas=2, rank=0, **options)

    with pytest.raises(ValueError, match=match):
        evaluate(small_model(), DataLoader(data, batch_size=50, sampler=sampler), device="cpu")


def test_evaluate_shard_sampler_alone():
    data = eval_data(20)
    loader = DataLoader(data, batch_size=8, sampler=ShardSampler(data))

    assert evaluate(small_model(), loader, device="cpu")["count"] == 20


# A process group of one process, inside the test process.


def test_init_without_torchrun(monkeypatch):
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)

    distributed.init_from_env("cpu")

    assert not distributed.is_distributed()


@pytest.mark.parametrize(
    ("variables", "match"),
    [
        (
            {"RANK": "0", "WORLD_SIZE": "2"},
            "MASTER_ADDR and MASTER_PORT are not; start .* torchrun",
        ),
        ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK='x' is not an integer"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, r"RANK=2, WORLD_SIZE=2 .* RANK must be in \[0, WORLD"),
    ],
    ids=["master", "integer", "rank"],
)
def test_init_rejects_environment(monkeypatch, variables, match):
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    if "MASTER" not in match:
        variables = {**variables, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    for name, value in variables.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(ValueError, match=match):
        distributed.init_from_env("cpu")


@pytest.mark.parametrize(
    ("device", "local_rank", "match"),
    [
        ("cuda:1", "0", "'cuda:1' names one GPU, .* pass 'cuda' or 'auto'"),
        ("cuda", "1", "LOCAL_RANK is 1, but only 1 GPU.* are visible.*--nproc-per-node 1"),
    ],
    ids=["index", "local_rank"],
)
def test_init_rejects_gpu(monkeypatch, device, local_rank, match):
    # Pretends one GPU is visible; both errors come before any CUDA call.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    env = {"RANK": local_rank, "WORLD_SIZE": "2", "LOCAL_RANK": local_rank}
    for name, value in {**env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(ValueError, match=match):
        distributed.init_from_env(device)


def fit_small(**options) -> tuple[FusionModel, list[dict[str, float]]]:
    model = small_model()
    history = fit(
        model,
        BatchLoader(train_data(120), batch_size=20, shuffle=True, seed=0),
        epochs=2,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
        eval_loader=BatchLoader(eval_data(50), batch_size=20),
        device="cpu",
        progress=False,
        **options,
    )
    for record in history:
        record.pop("train_seconds")
    return model, history


@pytest.fixture(scope="module")
def plain_fit():
    assert not distributed.is_distributed(), "the reference run must have no process group"
    return fit_small()


@pytest.mark.usefixtures("one_rank_group")
def test_one_rank_history(plain_fit):
    _, history = fit_small()

    assert history == plain_fit[1]


@pytest.mark.usefixtures("one_rank_group")
def test_one_rank_weights(plain_fit):
    model, _ = fit_small()

    state = plain_fit[0].state_dict()
    assert all(torch.equal(value, state[name]) for name, value in model.state_dict().items())


@pytest.mark.usefixtures("one_rank_group")
def test_fit_rejects_wrapper():
    model = small_model()

    with pytest.raises(ValueError, match="DistributedDataParallel wrapper; pass the model"):
        fit(
            DistributedDataParallel(model),
            BatchLoader(train_data(20), batch_size=10),
            epochs=1,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            device="cpu",
        )


@pytest.mark.usefixtures("one_rank_group")
def test_one_rank_agrees():
    distributed.check_same_values({"seed": 0})


# Library checks on two processes (this file's `checks` mode).


def test_checks_ranks(checks):
    assert [checks[r]["rank"] for r in (0, 1)] == [0, 1]


def test_checks_world_size(checks):
    assert [checks[r]["world_size"] for r in (0, 1)] == [2, 2]


@pytest.mark.parametrize("loader", ["batch_loader", "shard_sampler"])
def test_sharded_count(checks, loader):
    assert [checks[r][loader]["count"] for r in (0, 1)] == [TEST_ITEMS, TEST_ITEMS]


def test_shard_batch_counts(checks):
    # 301 items in global batches of 10 leave one item for the last batch, which rank 1
    # has no share of.
    assert [checks[r]["eval_batches"] for r in (0, 1)] == [31, 30]


@pytest.mark.parametrize("loader", ["batch_loader", "shard_sampler"])
def test_sharded_values(checks, loader):
    reference = evaluate(small_model(), BatchLoader(eval_data(), batch_size=1000), device="cpu")

    values = checks[0][loader]
    assert values == pytest.approx(reference, rel=1e-6, abs=1e-6, nan_ok=True)


def test_padding_inflates_count(checks):
    # The hazard that the non-padding shards avoid: DistributedSampler repeats an item.
    assert checks[0]["padded_count"] == TEST_ITEMS + 1


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("unsharded_eval", "evaluation BatchLoader is built for rank 0 of 1, but this process"),
        ("plain_dataloader", "evaluation DataLoader has no ShardSampler, so every one of the 2"),
        ("padded_eval", "DistributedSampler repeats samples"),
        ("unsharded_train", "training BatchLoader is built for rank 0 of 1.*own shard"),
        ("train_without_sampler", "training DataLoader has no DistributedSampler"),
        ("different_seeds", "Ranks disagree on seed: rank 0 has 0, rank 1 has 1; start every"),
        ("uneven_steps", "disagree on the number of training batches per epoch: rank 0 has 3"),
        ("last_batch", "last batch of the 41 training items contains 1 item"),
        ("resume_elsewhere", "epochs done in the training checkpoint: rank 0 has 2, rank 1 has 0"),
    ],
)
def test_two_rank_errors(checks, name, match):
    assert all(re.search(match, checks[r][name]) for r in (0, 1)), [checks[r][name] for r in (0, 1)]


def test_replicas_equal(checks):
    assert checks[0]["replicas_equal"]


def test_loss_parameters_equal(checks):
    assert checks[0]["loss_parameters_equal"]


def test_history_equal(checks):
    assert checks[0]["fit_history"] == checks[1]["fit_history"]


def test_history_count(checks):
    assert [record["test_count"] for record in checks[0]["fit_history"]] == [TEST_ITEMS] * 2


def test_checkpoint_files(checks):
    assert checks[0]["checkpoint_files"] == ["training_state.pt"]


def test_sampler_epoch(checks):
    assert checks[0]["sampler_epoch"] == 2


def test_sampler_history_count(checks):
    assert checks[0]["sampler_test_count"] == TEST_ITEMS


def test_run_on_main(checks):
    assert [checks[r]["run_on_main"] for r in (0, 1)] == ["X", None]


# The command line under torchrun.


def test_two_process_exit(two_processes):
    result, _ = two_processes

    assert result.returncode == 0, result.stderr


def test_two_process_count(two_processes):
    _, out = two_processes

    assert read_json(out / "metrics.json")["test_count"] == TEST_ITEMS


def test_two_process_epoch_counts(two_processes):
    _, out = two_processes

    epochs = read_json(out / "history.json")["epochs"]
    assert [record["test_count"] for record in epochs] == [TEST_ITEMS, TEST_ITEMS]


def test_two_process_outputs(two_processes):
    _, out = two_processes

    names = sorted(path.name for path in out.iterdir())
    assert names == ["history.json", "metrics.json", "model.pt", "training_state.pt"]


def test_two_process_world_size(two_processes):
    _, out = two_processes

    assert read_json(out / "metrics.json")["world_size"] == 2


def test_two_process_model(two_processes):
    _, out = two_processes

    assert isinstance(checkpoint.load(out / "model.pt"), FusionModel)


def test_two_process_logs_once(two_processes):
    result, _ = two_processes

    assert result.stderr.count("epoch 2/2 ") == 1


def test_two_process_prints_once(two_processes):
    result, _ = two_processes

    assert result.stdout.count(f"test set, {TEST_ITEMS} images") == 1


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_two_process_matches_one(two_processes, one_process, name):
    two = read_json(two_processes[1] / "metrics.json")[name]
    one = read_json(one_process[1] / "metrics.json")[name]

    assert abs(two - one) <= TOLERANCE[name], (two, one)


def test_one_process_world_size(one_process):
    result, out = one_process

    assert read_json(out / "metrics.json")["world_size"] == 1, result.stderr


def test_two_process_evaluate(two_processes, data_root, tmp_path):
    _, out = two_processes
    metrics_out = tmp_path / "eval.json"

    result = torchrun(
        "-m", "mnist_fusion.cli", "evaluate", "--root", str(data_root),
        "--checkpoint", str(out / "model.pt"), "--metrics-out", str(metrics_out),
        "--device", "cpu",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert read_json(metrics_out)["test_count"] == TEST_ITEMS
    trained = read_json(out / "metrics.json")
    assert {name: read_json(metrics_out)[name] for name in METRIC_NAMES} == pytest.approx(
        {name: trained[name] for name in METRIC_NAMES}, abs=1e-9
    )


def test_different_seeds_rejected(data_root, tmp_path):
    out = tmp_path / "out"

    result = torchrun(__file__, "cli", *train_args(data_root, out), **{SEED_FROM_RANK: "1"})

    assert result.returncode != 0
    assert "Ranks disagree on --seed: rank 0 has 0, rank 1 has 1" in result.stderr
    assert not (out / "model.pt").exists()


@pytest.fixture(scope="module")
def failed_run(data_root, tmp_path_factory):
    """A two-process run whose rank 1 raises as epoch 2 starts, after one checkpoint."""
    out = tmp_path_factory.mktemp("failed_run")
    fault = {FAIL_RANK: "1", FAIL_EPOCH: "2"}
    return torchrun(__file__, "cli", *train_args(data_root, out), **fault), out


def test_failure_exit(failed_run):
    result, _ = failed_run

    assert result.returncode != 0


def test_failure_message(failed_run):
    result, _ = failed_run

    assert "mnist-fusion train: error (rank 1): injected failure in epoch 2" in result.stderr


@on_linux
def test_failure_leaves_no_process(failed_run):
    _, out = failed_run

    assert processes_with(str(out)) == []


def test_failure_keeps_checkpoint(failed_run):
    _, out = failed_run

    assert sorted(path.name for path in out.iterdir()) == ["training_state.pt"]


def test_resume_after_failure(failed_run, two_processes, data_root):
    _, out = failed_run

    result = torchrun("-m", "mnist_fusion.cli", *train_args(data_root, out), "--resume")

    assert result.returncode == 0, result.stderr
    assert "Resumed from" in result.stderr
    assert same_weights(out / "model.pt", two_processes[1] / "model.pt")


# This file as a torchrun worker script.


def _run_checks(out: Path) -> None:
    distributed.init_from_env("cpu")
    rank = distributed.get_rank()
    results: dict[str, object] = {"rank": rank, "world_size": distributed.get_world_size()}
    data = eval_data()
    world = distributed.get_world_size()

    def error_of(action) -> str:
        try:
            action()
        except ValueError as error:
            return str(error)
        return "no error"

    loader = BatchLoader(data, batch_size=10, rank=rank, world_size=world)
    results["eval_batches"] = len(loader)
    results["batch_loader"] = evaluate(small_model(), loader, device="cpu")
    shard_loader = DataLoader(data, batch_size=7, sampler=ShardSampler(data))
    results["shard_sampler"] = evaluate(small_model(), shard_loader, device="cpu")
    results["padded_count"] = _padded_count(data)

    def evaluate_with(loader):
        return lambda: evaluate(small_model(), loader, device="cpu")

    results["unsharded_eval"] = error_of(evaluate_with(BatchLoader(data, batch_size=10)))
    results["plain_dataloader"] = error_of(evaluate_with(DataLoader(data, batch_size=10)))
    padded = DataLoader(data, batch_size=10, sampler=DistributedSampler(data, shuffle=False))
    results["padded_eval"] = error_of(evaluate_with(padded))
    results["different_seeds"] = error_of(lambda: distributed.check_same_values({"seed": rank}))

    training = train_data(200)

    def fit_with(loader, **options):
        model = small_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        return lambda: fit(model, loader, epochs=2, optimizer=optimizer, device="cpu", **options)

    results["unsharded_train"] = error_of(fit_with(BatchLoader(training, batch_size=20)))
    results["train_without_sampler"] = error_of(fit_with(DataLoader(training, batch_size=20)))
    uneven = [training.batch(torch.arange(10))] * (3 - rank)
    results["uneven_steps"] = error_of(fit_with(uneven))
    odd = TensorFusionDataset(training.images[:41], training.labels[:41], training.side[:41])
    results["last_batch"] = error_of(
        fit_with(BatchLoader(odd, batch_size=10, rank=rank, world_size=world))
    )

    shared = out / "shared_state"
    model = small_model()
    loss_fn = FusionLoss(uncertainty_weighting=True)
    history = fit(
        model,
        BatchLoader(training, batch_size=20, shuffle=True, seed=0, rank=rank, world_size=world),
        epochs=2,
        optimizer=torch.optim.SGD([*model.parameters(), *loss_fn.parameters()], lr=0.05),
        loss_fn=loss_fn,
        eval_loader=BatchLoader(data, batch_size=100, rank=rank, world_size=world),
        device="cpu",
        checkpoint_dir=shared,
    )
    results["fit_history"] = [
        {k: v for k, v in record.items() if k != "train_seconds"} for record in history
    ]
    results["replicas_equal"] = _same_on_all_ranks(model.state_dict().values())
    results["loss_parameters_equal"] = _same_on_all_ranks(loss_fn.parameters())
    results["checkpoint_files"] = sorted(path.name for path in shared.iterdir())

    # Rank 1 looks for the checkpoint in a folder that rank 0 never wrote to.
    elsewhere = shared if rank == 0 else out / f"empty_{rank}"
    model = small_model()
    loss_fn = FusionLoss(uncertainty_weighting=True)
    results["resume_elsewhere"] = error_of(
        lambda: fit(
            model,
            BatchLoader(training, batch_size=20, shuffle=True, seed=0, rank=rank, world_size=world),
            epochs=2,
            optimizer=torch.optim.SGD([*model.parameters(), *loss_fn.parameters()], lr=0.05),
            loss_fn=loss_fn,
            device="cpu",
            checkpoint_dir=elsewhere,
            resume=True,
        )
    )

    sampler = DistributedSampler(training, shuffle=True, seed=0)
    model = small_model()
    history = fit(
        model,
        DataLoader(training, batch_size=10, sampler=sampler),
        epochs=2,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
        eval_loader=DataLoader(data, batch_size=50, sampler=ShardSampler(data)),
        device="cpu",
    )
    results["sampler_epoch"] = sampler.epoch
    results["sampler_test_count"] = history[-1]["test_count"]
    results["run_on_main"] = distributed.run_on_main_process(str.upper, "x")

    (out / f"results_{rank}.json").write_text(json.dumps(results))
    distributed.destroy()


def _padded_count(data: TensorFusionDataset) -> int:
    model = small_model().eval()
    metrics = FusionMetrics()
    sampler = DistributedSampler(data, shuffle=False)
    with torch.no_grad():
        for batch in DataLoader(data, batch_size=50, sampler=sampler):
            metrics.update(model(batch["image"], batch["side"]), batch)
    with metrics.sync_context():
        return int(metrics.count)


def _same_on_all_ranks(tensors) -> bool:
    flat = torch.cat([t.detach().double().flatten() for t in tensors])
    gathered = [torch.empty_like(flat) for _ in range(distributed.get_world_size())]
    dist.all_gather(gathered, flat)
    return all(torch.equal(gathered[0], other) for other in gathered[1:])


def _run_cli(argv: list[str]) -> int:
    from mnist_fusion.cli import main

    rank = int(os.environ["RANK"])
    if os.environ.get(SEED_FROM_RANK):
        argv = [*argv, "--seed", str(rank)]
    if os.environ.get(FAIL_RANK) == str(rank):
        _fail_in_epoch(int(os.environ[FAIL_EPOCH]))
    return main(argv)


def _fail_in_epoch(epoch: int) -> None:
    iterate = BatchLoader.__iter__
    started = 0

    # A generator, so that only iterators that are advanced count: tqdm.auto calls
    # iter() on its iterable twice and advances one of them.
    def failing_iter(self: BatchLoader):
        nonlocal started
        if self.shuffle:  # The training loader: one iteration per epoch.
            started += 1
            if started == epoch:
                raise RuntimeError(f"injected failure in epoch {epoch}")
        yield from iterate(self)

    BatchLoader.__iter__ = failing_iter  # type: ignore[method-assign]


if __name__ == "__main__":
    mode, *arguments = sys.argv[1:]
    if mode == "checks":
        _run_checks(Path(arguments[0]))
    elif mode == "cli":
        sys.exit(_run_cli(arguments))
    else:
        sys.exit(f"unknown mode {mode!r}; expected 'checks' or 'cli'")
