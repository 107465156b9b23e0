"""train.py end to end on tiny settings: outputs, exact resume, DDP on CPU, losses, bad input,
and what a run guarantees when it is misused, interrupted or fails."""
import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import checkpoint
import data
import flags
import irsde
import restore
import sample
import tasks
import train

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--preset", "tiny", "--crop", "32", "--batch", "2", "--val-images", "2", "--sample-steps", "3", "--T", "20"]
QUICK = ["--val-images", "1", "--sample-steps", "1", "--val-every", "100"]  # after FAST
ONE_THREAD = dict(os.environ, OMP_NUM_THREADS="1")


def write_pairs(root, n=2, size=32, scale=1):
    """A GT/ + LQ/ folder of n random pairs, LQ = GT size / scale (averaged down)."""
    g = torch.Generator().manual_seed(0)
    for k in range(n):
        gt = torch.rand(3, size, size, generator=g)
        data.save_image(gt, root / "GT" / f"{k}.png")
        data.save_image(torch.nn.functional.avg_pool2d(gt[None], scale)[0], root / "LQ" / f"{k}.png")
    return root


@pytest.fixture(scope="module")
def sr_run(tmp_path_factory):
    """(folder, out): 2 steps of SR training on an x4 GT/ + LQ/ folder (GT 64 x 64, LQ 16 x 16)."""
    root = tmp_path_factory.mktemp("sr")
    folder, out = write_pairs(root / "x4", size=64, scale=4), root / "run"
    train.main(["--task", "sr", *FAST, *QUICK, "--iters", "2", "--data", str(folder), "--out", str(out)])
    return folder, out


def run(tmp, *extra, iters=4):
    train.main(["--task", "derain", *FAST, "--iters", str(iters), "--out", str(tmp), *extra])
    return torch.load(tmp / "last.pt", weights_only=False)


def test_end_to_end_writes_checkpoint_log_and_picture(tmp_path):
    ckpt = run(tmp_path, "--val-every", "2")
    assert ckpt["step"] == 4
    config = ckpt["config"]
    assert config["task"] == "derain" and config["sde"]["T"] == 20 and config["param"] == "x0"
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in rows if "psnr" in r] == [2, 4]
    assert {"psnr_y", "ssim", "psnr_input"} <= set(rows[-1])
    picture = data.load_image(tmp_path / "val_0000004.png")
    assert picture.shape == (3, 2 * train.VAL_CROP, 3 * train.VAL_CROP)  # two rows of LQ | restored | GT
    assert len(data.find_pairs(tmp_path / "val")) == 2  # the validation set, exported for sample.py
    # the unseen set: validated, pictured and exported beside it
    assert {"unseen_psnr_y", "unseen_psnr_y_input"} <= set(rows[-1])
    assert data.load_image(tmp_path / "unseen_0000004.png").shape == picture.shape
    assert len(data.find_pairs(tmp_path / "unseen")) == 2
    net = checkpoint.NETWORKS[config["net"]["name"]](**{k: v for k, v in config["net"].items() if k != "name"})
    net.load_state_dict(ckpt["ema"])
    assert not (tmp_path / "last.pt.tmp").exists()


def test_resume_is_bit_identical(tmp_path):
    straight = run(tmp_path / "a", "--milestones", "2", "5", iters=6)
    run(tmp_path / "b", "--milestones", "2", "5", iters=3)  # the halvings of the 6-step run
    train.main(["--resume", str(tmp_path / "b" / "last.pt"), "--iters", "6"])
    resumed = torch.load(tmp_path / "b" / "last.pt", weights_only=False)
    assert resumed["step"] == 6
    for key in ("model", "ema"):
        for name, tensor in straight[key].items():
            assert torch.equal(tensor, resumed[key][name]), (key, name)


def test_resume_rebuilds_the_saved_network_when_the_preset_changed(tmp_path, monkeypatch):
    """The small preset gained GroupNorm blocks (2026-12-01): a run saved before resumes with the
    network it was saved with, not the preset's new definition."""
    before = run(tmp_path, iters=2)
    assert before["config"]["net"]["preact"] is True
    name = before["config"]["args"]["net"]  # the preset's network, "micro"
    monkeypatch.setitem(checkpoint.NETS, name, ("unet", dict(checkpoint.NETS[name][1], preact=False)))
    train.main(["--resume", str(tmp_path / "last.pt"), "--iters", "3"])
    after = torch.load(tmp_path / "last.pt", weights_only=False)
    assert after["step"] == 3 and after["config"]["net"] == before["config"]["net"]
    assert after["model"].keys() == before["model"].keys()


def test_sigterm_saves_and_resumes_exactly(tmp_path):
    """A run stopped by SIGTERM mid-way writes a checkpoint; resuming ends on the same weights."""
    args = [sys.executable, "train.py", "--task", "derain", *FAST, "--iters", "12", "--val-every", "100",
            "--out", str(tmp_path / "killed")]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ONE_THREAD)
    for line in proc.stdout:
        if line.startswith("timing:"):  # printed inside the loop, after step 6
            proc.send_signal(signal.SIGTERM)
            break
    output = proc.stdout.read()
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM, output  # 143: `train.py && sample.py` stops here
    stopped = torch.load(tmp_path / "killed" / "last.pt", weights_only=False)
    assert "stopped by signal" in output and stopped["step"] < 12
    train.main(["--resume", str(tmp_path / "killed" / "last.pt")])
    resumed = torch.load(tmp_path / "killed" / "last.pt", weights_only=False)
    straight = run(tmp_path / "straight", "--val-every", "100", iters=12)
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name


# train.py under torchrun, with the threads of each process counted before init_process_group and after
# destroy_process_group: gloo's threads must be gone, else they can still free tensors while Python exits,
# which aborts the process (6 of 107 runs on a busy 2-core machine before the fix).
DDP_WRAPPER = """
import os, sys
import torch.distributed as dist
sys.path.insert(0, os.getcwd())
import train
threads = lambda: len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 0  # Linux only
init, destroy = dist.init_process_group, dist.destroy_process_group
def say(line):  # one write of a whole line: both ranks share the pipe, and print() writes in pieces
    sys.stdout.flush()
    os.write(1, (line + "\\n").encode())
def counted_init(*args, **kwargs):
    say(f"threads before init {threads()}")
    init(*args, **kwargs)
def counted_destroy():
    destroy()
    say(f"threads after destroy {threads()}")
dist.init_process_group, dist.destroy_process_group = counted_init, counted_destroy
train.cli()
"""


def test_ddp_two_processes_on_cpu(tmp_path):
    out = tmp_path / "ddp"
    wrapper = tmp_path / "train_counted.py"
    wrapper.write_text(DDP_WRAPPER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(wrapper),
           "--task", "derain", *FAST, "--iters", "3", "--device", "cpu", "--out", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=ONE_THREAD)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 replicas in sync" in result.stdout
    assert "batch 2 x 2" in result.stdout
    assert sorted(p.name for p in out.glob("*.pt")) == ["last.pt"]
    before, after = (sorted(int(line.split()[-1]) for line in result.stdout.splitlines() if line.startswith(key))
                     for key in ("threads before init", "threads after destroy"))
    assert len(before) == 2 and after == before, result.stdout  # destroy joined the group's threads


@pytest.mark.parametrize("loss,param,task", [("ml", "noise", "derain"), ("noise", "noise", "derain"),
                                             ("ml", "x0", "derain"), ("cnn", "noise", "derain"),
                                             ("ml", "x0", "denoise")])
def test_each_loss_decreases_on_a_fixed_batch(loss, param, task):
    args = flags.fill_defaults(flags.parse(["--task", task, "--preset", "tiny", "--loss", loss, "--param", param,
                                                 "--T", "20", "--t-draw", "uniform"]))  # forward states: a fixed objective
    torch.manual_seed(0)
    net, sde = checkpoint.build(args, torch.device("cpu"))
    net.final_conv.reset_parameters()  # default init, as the authors: the zero-initialised head makes step 1 special
    lq, gt = (torch.stack(x) for x in zip(*[data.make_dataset(task, crop=32)[i] for i in range(4)]))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        g = torch.Generator().manual_seed(0)  # same t and noise each time: a fixed objective
        loss_value = train.batch_loss(net, sde, args, lq, gt, g)
        opt.zero_grad()
        loss_value.backward()
        opt.step()
        losses.append(loss_value.item())
    # The authors' network has no normalisation: reading the noise out of x (scaled by 1/lambda) takes
    # many steps, so eps prediction falls slowly at first; x0 and CNN outputs move fast.
    assert losses[-1] < (0.998 if param == "noise" and loss != "cnn" else 0.95) * losses[0], losses


def test_bad_input_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the default output folder runs/ would appear
    (tmp_path / "empty").mkdir()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cases = [
        (["--task", "derain", "--data", str(tmp_path / "missing")], "missing"),
        (["--task", "derain", "--data", str(tmp_path / "empty")], "empty"),
        (["--task", "derain", "--out", str(blocker / "sub")], "cannot write to the output folder"),
        (["--resume", str(tmp_path / "nope.pt")], "not found"),
    ]
    for argv, expected in cases:
        with pytest.raises(ValueError, match=expected):
            train.main([*argv, *FAST, "--iters", "1"])
        assert not (tmp_path / "runs").exists()  # failed before creating the default output folder
    run(tmp_path / "ok", iters=1)
    with pytest.raises(ValueError, match="task=derain"):
        train.main(["--resume", str(tmp_path / "ok" / "last.pt"), "--task", "deblur"])
    with pytest.raises(SystemExit):
        flags.parse(["--task", "paint"])
    assert not list((tmp_path / "empty").iterdir())


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    run(tmp_path, iters=2)
    before = (tmp_path / "last.pt").read_bytes()
    real = train.batch_loss
    monkeypatch.setattr(train, "batch_loss", lambda *a: real(*a) * float("nan"))
    with pytest.raises(FloatingPointError, match="step 3"):
        train.main(["--resume", str(tmp_path / "last.pt"), "--iters", "4"])
    assert (tmp_path / "last.pt").read_bytes() == before


def test_nan_loss_then_a_signal_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """The loss is read on the host only at log, validation and save steps (no host sync per step):
    a NaN between two such steps still stops the run at the next one, and a signal's save in
    between never replaces the last good checkpoint with a non-finite model."""
    run(tmp_path, iters=2)  # steps 3 and 4 neither log (every 100 steps) nor validate and save
    before = (tmp_path / "last.pt").read_bytes()
    real, calls = train.batch_loss, []

    def nan_then_interrupted(*args):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # the loop ends after this step and would save
        return real(*args) * (float("nan") if len(calls) == 1 else 1)

    monkeypatch.setattr(train, "batch_loss", nan_then_interrupted)
    with pytest.raises(FloatingPointError, match="not finite at step 3"):
        train.main(["--resume", str(tmp_path / "last.pt"), "--iters", "50"])
    assert len(calls) == 2 and (tmp_path / "last.pt").read_bytes() == before


def test_ema_is_torchs_ema_without_its_host_copy():
    """train.EMA gives exactly what torch's AveragedModel with get_ema_multi_avg_fn gives (the first
    update copies, each later one moves 1 - decay of the way), float buffers averaged, integer ones
    (a fork's BatchNorm counter) following the model."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    ours, theirs = train.EMA(net, 0.9), AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    for k in range(3):
        with torch.no_grad():
            for tensor in net.parameters():
                tensor.add_(torch.randn_like(tensor))
        net(torch.rand(2, 3, 8, 8))  # moves the running statistics and the batch counter
        ours.update_parameters(net)
        theirs.update_parameters(net)
        for name, tensor in theirs.module.state_dict().items():
            if tensor.is_floating_point():
                assert torch.equal(ours.module.state_dict()[name], tensor), (k, name)
    assert ours.module[1].num_batches_tracked == net[1].num_batches_tracked == 3
    assert ours.n_averaged == theirs.n_averaged == 3


def test_compile_mode_reaches_torch_compile(tmp_path, monkeypatch):
    """--compile reduce-overhead (CUDA graphs) is passed to torch.compile; --compile alone is its default mode.
    On the CPU, where torch.compile builds C++, a machine without the compiler is refused before any work."""
    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.raises(flags.UsageError, match=r"--compile on the CPU: .* with no-such-compiler \(or \$CXX\), which"):
        run(tmp_path / "none", "--compile", iters=1)
    assert not (tmp_path / "none").exists()
    monkeypatch.setenv("CXX", sys.executable)  # any program found on the machine passes
    modes = []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: modes.append(mode) or model)
    run(tmp_path / "a", "--compile", "reduce-overhead", iters=1)
    run(tmp_path / "b", "--compile", iters=1)
    assert modes == ["reduce-overhead", "default"]


def test_compiled_chain_training_makes_one_graph(tmp_path, monkeypatch):
    """--compile with a preset trained on the chain: the chain's calls move fewer images at each step,
    batch sizes that would make a compiled network recompile (2 graphs after 3 steps, 3 after 8, before
    they ran on the plain network), so the compiled one sees one shape: torch's dynamo counters count
    one graph after 8 steps. The eager backend makes the same graphs without the minutes of a C++ build."""
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: real(model, backend="eager"))
    monkeypatch.setenv("CXX", sys.executable)  # the eager backend builds no C++
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    run(tmp_path, "--compile", iters=8)  # FAST: the tiny preset, --t-draw chain
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


def test_cli_exit_code_and_message(tmp_path):
    # --out: the repository's runs/derain may hold the quick start's checkpoint, refused first
    result = subprocess.run([sys.executable, "train.py", "--task", "derain", "--data", str(tmp_path / "none"),
                             "--out", str(tmp_path / "run")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120, env=ONE_THREAD)
    assert result.returncode != 0 and "error:" in result.stderr and str(tmp_path / "none") in result.stderr


# ---- what a run guarantees ------------------------------------------------------------------------

def test_new_run_never_replaces_a_trained_checkpoint(sr_run):
    folder, out = sr_run
    before = {name: (out / name).read_bytes() for name in ("last.pt", "metrics.jsonl")}
    with pytest.raises(data.DataError, match=f"python train.py --resume {out / 'last.pt'}.*--out"):
        train.main(["--task", "sr", *FAST, *QUICK, "--iters", "2", "--data", str(folder), "--out", str(out)])
    assert {name: (out / name).read_bytes() for name in before} == before


def refused(monkeypatch, tmp_path, given, message):
    """train.main refuses the flags `given` with `message` before creating any output folder."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(flags.UsageError, match=message):
        train.main(["--task", "derain", *FAST, "--iters", "2", *given])
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("given", [["--sample-steps", "0"], ["--sample-steps", "-2"], ["--sample-steps", "21"]])
def test_sample_steps_must_be_between_1_and_T(monkeypatch, tmp_path, given):
    refused(monkeypatch, tmp_path, given, r"--sample-steps .*: must be between 1 and --T \(20\)")


def test_a_zero_interval_is_refused(monkeypatch, tmp_path):
    refused(monkeypatch, tmp_path, ["--val-every", "0"], "--val-every 0: must be at least 1")


@pytest.mark.parametrize("given, message", [
    (["--iters", "0"], "--iters 0: must be at least 1"),
    (["--batch", "0"], "--batch 0"), (["--crop", "4"], "--crop 4: must be at least 8"),
    (["--lr", "0"], "--lr 0.0"), (["--lr", "nan"], "--lr nan"), (["--ema", "1"], r"--ema 1.0: must be in \[0, 1\)"),
    (["--workers", "-1"], "--workers -1"), (["--T", "0", "--sample-steps", "1"], "--T 0"),
    (["--eps", "1"], "--eps 1.0"), (["--max-sigma", "300"], r"--max-sigma 300.0: must be in \(0, 255\]: lambda on "
                                                             "the 0-255 scale"),
    (["--max-sigma", "0"], "--max-sigma 0.0"), (["--milestones", "5", "0"], "--milestones 5 0"),
    (["--val-images", "0"], "--val-images 0"), (["--seed", "-1"], "--seed -1"),
])
def test_every_numeric_flag_is_checked_before_any_work(monkeypatch, tmp_path, given, message):
    refused(monkeypatch, tmp_path, given, message)


@pytest.mark.parametrize("device, message", [("gpu", "--device gpu: expected cpu, cuda or cuda:N"),
                                             ("cuda", "--device cuda: CUDA is not available")])
def test_device_is_cpu_cuda_or_cuda_n_and_must_exist(monkeypatch, tmp_path, device, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on a GPU machine
    refused(monkeypatch, tmp_path, ["--device", device], message)


def test_sr_checkpoint_records_the_scale_and_restores_its_folder(sr_run, tmp_path):
    """An x4 model upsamples LQ inputs as in training: GT-sized results from the folder and from
    the LQ images alone."""
    folder, out = sr_run
    assert torch.load(out / "last.pt", weights_only=False)["config"]["scale"] == 4
    for name, source in (("pairs", folder), ("lq", folder / "LQ")):
        sample.main(["--checkpoint", str(out / "last.pt"), "--input", str(source), "--output", str(tmp_path / name),
                     "--device", "cpu"])
        assert data.load_image(tmp_path / name / "0.png").shape == (3, 64, 64)
    assert json.loads((tmp_path / "pairs" / "metrics.json").read_text())["scale"] == 4


def test_empty_or_folder_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(data.DataError, match="empty.pt: checkpoint file is empty"):
        train.main(["--resume", str(tmp_path / "empty.pt")])
    with pytest.raises(data.DataError, match="is a folder, not a checkpoint file"):
        train.main(["--resume", str(tmp_path)])


def test_damaged_training_image_stops_the_run_before_step_1(tmp_path):
    folder = write_pairs(tmp_path / "data", n=3)
    damaged = folder / "GT" / "2.png"
    damaged.write_bytes(damaged.read_bytes()[:200])  # a valid header, truncated pixels: found only by decoding
    with pytest.raises(data.DataError, match=f"{damaged}: cannot decode image"):  # not a worker's traceback
        train.main(["--task", "derain", *FAST, *QUICK, "--workers", "1", "--data", str(folder),
                    "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_error_after_step_1_saves_and_says_how_to_resume(tmp_path, monkeypatch, capsys):
    real, calls = train.batch_loss, []

    def failing(*args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory")
        return real(*args)

    monkeypatch.setattr(train, "batch_loss", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        train.main(["--task", "derain", *FAST, *QUICK, "--iters", "10", "--out", str(tmp_path)])
    assert torch.load(tmp_path / "last.pt", weights_only=False)["step"] == 2
    assert f"resume with: python train.py --resume {tmp_path / 'last.pt'}" in capsys.readouterr().err


def test_resume_refuses_flags_that_differ_from_the_run(sr_run, tmp_path):
    folder, out = sr_run
    path = str(out / "last.pt")
    ckpt = checkpoint.read_for_resume(path)
    for flag_args, named in ((["--lr", "0.5"], "--lr"), (["--lr", "0"], "--lr"), (["--data", str(tmp_path)], "--data"),
                             (["--batch", "3"], "--batch"), (["--max-sigma", "20"], "--max-sigma")):
        with pytest.raises(flags.UsageError, match=f"would ignore {named} "):
            train.main(["--resume", path, "--iters", "4", *flag_args])
    same = flags.parse(["--resume", path, "--lr", str(ckpt["config"]["args"]["lr"]), "--data", str(folder)])
    assert flags.resume_args(same, ckpt, path).lr == ckpt["config"]["args"]["lr"]
    written = torch.load(path, weights_only=False)  # as written before --t-draw: uniform indices
    written["config"]["args"] = {k: v for k, v in written["config"]["args"].items() if k != "t_draw"}
    torch.save(written, tmp_path / "before.pt")
    assert checkpoint.read_for_resume(tmp_path / "before.pt")["config"]["args"]["t_draw"] == "uniform"
    for retired, resumes in ((dict(first_share=0.5), False), (dict(t_draw="chain-any"), False),
                             (dict(loss_norm="l2"), False), (dict(weighting="uniform"), False),
                             (dict(clip_x0=False), False),  # the tiny preset: ml-posterior, x0 output
                             (dict(loss_norm="l1", first_share=0.0, grid_share=0.0, weighting="x0", clip_x0=True), True)):
        older = checkpoint.read_for_resume(path)  # an earlier version's run with settings it no longer has
        older["config"]["args"].update(retired)
        if resumes:  # the values this version implies: the same run
            assert flags.resume_args(flags.parse(["--resume", path]), older, path).lr == older["config"]["args"]["lr"]
            continue
        with pytest.raises(flags.UsageError, match=f"trained with {next(iter(retired))}=.*cannot be resumed"):
            flags.resume_args(flags.parse(["--resume", path]), older, path)


def test_resume_of_a_finished_run_asks_for_more_iters(sr_run):
    with pytest.raises(flags.UsageError, match="at step 2 already; pass --iters above it"):
        train.main(["--resume", str(sr_run[1] / "last.pt")])


def test_ctrl_c_saves_and_exits_130(tmp_path, monkeypatch):
    real, calls = train.batch_loss, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # handled by train.py: the step finishes
        return real(*args)

    monkeypatch.setattr(train, "batch_loss", interrupted)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--task", "derain", *FAST, *QUICK, "--iters", "50", "--out", str(tmp_path)])
    assert exit_info.value.code == 130
    assert torch.load(tmp_path / "last.pt", weights_only=False)["step"] == 2
    assert signal.getsignal(signal.SIGINT) is handler  # restored


def test_full_disk_is_a_named_error_that_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    real, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            return real(obj, f, *args, **kwargs)
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(SystemExit) as exit_info:
        train.cli(["--task", "derain", *FAST, *QUICK, "--iters", "2", "--val-every", "1", "--out", str(tmp_path)])
    assert str(exit_info.value.code) == f"error: {tmp_path / 'last.pt'}: cannot write (No space left on device)"
    monkeypatch.undo()
    assert torch.load(tmp_path / "last.pt", weights_only=False)["step"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("steps", [1, 3, 5])
def test_training_indices_are_uniform_or_those_the_sampler_visits(monkeypatch, steps):
    """--t-draw uniform (the paper) draws every index 1..T; chain exactly the indices the sampler
    evaluates, with the draw earlier runs made (the quick start's random stream is unchanged)."""
    seen, n = {}, 4000

    def chain_states(model, sde, mu, t, *rest):
        seen["chain"] = t
        return mu

    monkeypatch.setattr(irsde, "noise_model", lambda net, sde, param: lambda x, mu, t: torch.zeros_like(x))
    monkeypatch.setattr(irsde, "chain_states", chain_states)
    lq, gt = torch.zeros(n, 3, 1, 1), torch.ones(n, 3, 1, 1)
    for t_draw in ("uniform", "chain"):
        args = flags.fill_defaults(flags.parse(["--task", "derain", "--preset", "tiny", "--sample-steps",
                                                str(steps), "--t-draw", t_draw]))
        sde = checkpoint.build(args, torch.device("cpu"))[1]
        q_sample = sde.q_sample

        def forward_states(mu, x0, t, generator=None):
            seen["uniform"] = t
            return q_sample(mu, x0, t, generator)

        monkeypatch.setattr(sde, "q_sample", forward_states)
        train.batch_loss(torch.nn.Identity(), sde, args, lq, gt, torch.Generator().manual_seed(3))
    assert set(seen["uniform"].tolist()) == set(range(1, sde.T + 1))
    grid = torch.tensor(irsde.timesteps(sde, steps)[:-1])
    assert torch.equal(seen["chain"], grid[torch.randint(len(grid), (n,), generator=torch.Generator().manual_seed(3))])


def test_t_draw_chain_is_refused_for_denoising(tmp_path):
    with pytest.raises(flags.UsageError, match="--t-draw chain: denoise starts at t"):
        train.main(["--task", "denoise", *FAST, "--t-draw", "chain", "--out", str(tmp_path)])
    assert not tmp_path.joinpath("val").exists()


def test_t_draw_chain_is_refused_for_noise_matching(tmp_path):
    with pytest.raises(flags.UsageError, match="--t-draw chain: noise matching .* needs the noise"):
        train.main(["--task", "derain", *FAST, "--t-draw", "chain", "--loss", "noise", "--out", str(tmp_path)])


def test_t_draw_chain_trains_on_the_states_the_sampler_reaches(monkeypatch):
    """The loss sees x_t as the sampler builds it: from x_T = mu + lambda z through the network's own
    earlier predictions (irsde.chain_states), at the indices the sampler evaluates."""
    args = flags.fill_defaults(flags.parse(["--task", "derain", *FAST, "--t-draw", "chain", "--fp32"]))
    torch.manual_seed(0)
    net, sde = checkpoint.build(args, torch.device("cpu"))
    lq, gt = (torch.stack(x) for x in zip(*[data.make_dataset("derain", crop=16)[i] for i in range(4)]))
    seen = {}
    real = irsde.chain_states
    monkeypatch.setattr(irsde, "chain_states", lambda *a, **k: seen.setdefault("x", real(*a, **k)))
    loss = train.batch_loss(net, sde, args, lq, gt, torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.item() > 0 and all(p.grad is not None for p in net.parameters())
    generator, ts = torch.Generator().manual_seed(0), irsde.timesteps(sde, 3)
    t = torch.tensor(ts[:-1])[torch.randint(len(ts) - 1, (4,), generator=generator)]
    model = irsde.noise_model(restore.network(net, torch.device("cpu"), bf16=False), sde, "x0")
    expected = real(model, sde, lq, t, ts, "posterior", generator, True)
    assert torch.equal(seen["x"], expected)


def test_tiny_denoising_draws_uniform_indices():
    """The tiny preset trains on its sampler's own chain, except for denoising (t* varies)."""
    parse = lambda task: flags.fill_defaults(flags.parse(["--task", task, "--preset", "tiny"]))
    assert parse("derain").t_draw == "chain" and parse("denoise").t_draw == "uniform"
    assert parse("derain").sample_steps >= 3  # the quick start runs the reverse process, not one step


def test_iters_moves_the_presets_learning_rate_halvings_with_it():
    """A longer or shorter run halves its learning rate at the preset's fractions of its steps, not at
    the preset's step numbers; --milestones as given wins, and no halving falls before step 1."""
    parse = lambda *a: flags.fill_defaults(flags.parse(["--task", "deblur", "--preset", "tiny", *a]))
    preset = flags.PRESETS["tiny"]
    assert parse().milestones == preset["milestones"]
    assert parse("--iters", str(16 * preset["iters"])).milestones == [16 * m for m in preset["milestones"]]
    assert parse("--iters", "1000").milestones == [688, 875]
    assert parse("--iters", "5000", "--milestones", "10").milestones == [10]
    assert parse("--iters", "5000", "--milestones").milestones == []
    short = parse("--preset", "paper", "--iters", "2")
    assert short.milestones == [1, 1, 2]
    flags.check_args(short)


def test_gpu_preset_trains_and_restores_with_the_full_reverse_process(tmp_path):
    """--preset gpu: at least 10 network evaluations from x_T, trained on that chain, its
    learning-rate halvings inside the run; denoising keeps uniform indices (t* varies)."""
    parse = lambda task: flags.fill_defaults(flags.parse(["--task", task, "--preset", "gpu"]))
    args = parse("derain")
    assert args.sample_steps >= 10 and args.t_draw == "chain" and parse("denoise").t_draw == "uniform"
    assert all(0 < m < args.iters for m in args.milestones)
    val = write_pairs(tmp_path / "val", n=1, size=24)  # the built-in 128 x 128 set: 4 s more here
    train.main(["--task", "derain", "--preset", "gpu", "--iters", "1", "--batch", "2", "--crop", "32",
                "--val", str(val), "--T", "20", "--workers", "0", "--out", str(tmp_path / "run")])
    sampling = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["config"]["sampling"]
    assert sampling == {"sampler": "posterior", "steps": 10, "clip_x0": True}


def test_losses_of_an_untrained_network_are_the_input_error():
    """The untrained network returns its input (zero head): the CNN baseline's L1 and the x0 error of
    --loss ml-posterior are both mean |gt - lq|."""
    base = ["--task", "derain", "--preset", "tiny", "--T", "20"]
    lq, gt = (torch.stack(x) for x in zip(*[data.make_dataset("derain", crop=16)[i] for i in range(2)]))
    for loss in ("ml-posterior", "cnn"):
        args = flags.fill_defaults(flags.parse([*base, "--loss", loss]))
        torch.manual_seed(0)
        net, sde = checkpoint.build(args, torch.device("cpu"))
        value = train.batch_loss(net, sde, args, lq, gt, torch.Generator().manual_seed(0)).item()
        assert value == pytest.approx((gt - lq).abs().mean().item(), rel=1e-5), loss


def test_precision_is_chosen_by_the_device(monkeypatch):
    """bf16 autocast on CUDA and on CPUs with bf16 instructions; float32 elsewhere or with --fp32."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for native in (True, False):
        monkeypatch.setattr(restore, "native_cpu_bf16", lambda: native)
        assert restore.use_bf16(cpu) is native and restore.use_bf16(cuda)
        assert not restore.use_bf16(cpu, fp32=True) and not restore.use_bf16(cuda, fp32=True)


def test_bf16_training_step_is_the_float32_step_to_bf16_accuracy(monkeypatch):
    """The autocast really applies (the loss moves by bf16 rounding) and changes nothing else."""
    args = flags.fill_defaults(flags.parse(["--task", "derain", "--preset", "tiny", "--T", "20"]))
    torch.manual_seed(0)
    net, sde = checkpoint.build(args, torch.device("cpu"))
    net.final_conv.reset_parameters()  # a zero head would output 0 in either precision
    lq, gt = (torch.stack(x) for x in zip(*[data.make_dataset("derain", crop=32)[i] for i in range(4)]))
    monkeypatch.setattr(restore, "native_cpu_bf16", lambda: True)
    losses = {}
    for fp32 in (True, False):
        args.fp32 = fp32
        losses[fp32] = train.batch_loss(net, sde, args, lq, gt, torch.Generator().manual_seed(0)).item()
    assert losses[True] != losses[False]
    assert losses[False] == pytest.approx(losses[True], rel=0.005)


def test_signal_to_the_process_group_with_loader_workers_ends_cleanly(tmp_path):
    """timeout, SLURM, docker stop and a terminal's Ctrl-C signal every process of the group, the
    loader workers too: the run ends as when only the main process is signalled. SIGTERM and SIGINT
    each to a run of its own, the two side by side."""
    runs = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        args = [sys.executable, "train.py", "--task", "derain", *FAST, "--iters", "10000", "--workers", "2",
                "--val-every", "100000", "--out", str(tmp_path / sig.name)]
        runs[sig] = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=ONE_THREAD, start_new_session=True)
    for sig, proc in runs.items():
        for line in proc.stdout:
            if line.startswith("timing:"):  # printed inside the loop, after step 6
                os.killpg(proc.pid, sig)
                break
    for sig, proc in runs.items():
        output = proc.stdout.read()
        assert proc.wait(timeout=120) == 128 + sig, output
        assert "Traceback" not in output and "Error" not in output, output
        assert f"stopped by signal {int(sig)} at step" in output
        assert torch.load(tmp_path / sig.name / "last.pt", weights_only=False)["step"] >= 1


def test_loader_workers_follow_the_cores(monkeypatch):
    parse = lambda *given: flags.fill_defaults(flags.parse(["--task", "derain", *given]))
    monkeypatch.setattr(flags, "usable_cores", lambda: 2)
    assert parse().workers == 2 and flags.PRESETS["paper"]["workers"] == 4  # no more workers than cores
    monkeypatch.setattr(flags, "usable_cores", lambda: 64)
    assert parse().workers == 4
    assert parse("--workers", "3").workers == 3  # as given


def test_a_recipe_too_long_for_the_machine_says_so_early(monkeypatch):
    """Within the first minute: the measured time per step, what the whole run would take, and on a
    CPU what to run instead."""
    clock = iter([0.0, 13.0, 40.0, 53.0])
    monkeypatch.setattr(train.time, "time", lambda: next(clock))
    pace = train.Pace(0)
    cpu = torch.device("cpu")
    assert pace.estimate(1, 700_000, cpu) is None  # 13 s: the first step (warm-up) only starts the clock
    line = pace.estimate(2, 700_000, cpu)           # 40 s: at least 20 s after it
    assert "27.00 s per step (the 1 step after the first)" in line and "219 days" in line and "--preset tiny" in line
    assert pace.estimate(3, 700_000, cpu) is None   # once
    for device, iters, said in ((torch.device("cuda"), 700_000, "219 days"), (cpu, 12, "about 4.5 minutes")):
        clock = iter([0.0, 13.0, 40.0])
        pace = train.Pace(0)
        pace.estimate(1, iters, device)
        line = pace.estimate(2, iters, device)
        assert said in line and "--preset tiny" not in line
    clock = iter([0.0, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5])  # fast steps: due 5 steps after the first
    pace = train.Pace(0)
    assert [pace.estimate(step, 100, cpu) is not None for step in range(1, 7)] == [False] * 5 + [True]


def test_validation_images_too_small_for_the_metrics_are_refused_before_step_1(tmp_path):
    folder = write_pairs(tmp_path / "val", n=2, size=16)
    with pytest.raises(data.DataError, match=r"GT/0.png: 16x16, too small to validate on.*19 pixels a side"):
        train.main(["--task", "derain", *FAST, *QUICK, "--val", str(folder), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_training_images_smaller_than_the_crop_are_refused_before_step_1(tmp_path):
    folder = write_pairs(tmp_path / "data", n=2, size=24)
    with pytest.raises(data.DataError, match=r"GT/0.png: 24x24, smaller than the training crop 32 \(2 of 2"):
        train.main(["--task", "derain", *FAST, *QUICK, "--data", str(folder), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("task", tasks.TASKS)
def test_every_task_trains_with_its_tiny_recipe_and_restores(tmp_path, capsys, task):
    """Each task's --preset tiny trains, validates and restores end to end through sample.py: images of
    the GT's shape with values in [0, 1]. A one-pair folder (SR: LQ stored at the GT's size, as the built-in
    pairs are) keeps validation quick."""
    pairs = write_pairs(tmp_path / "pairs", n=1, size=24)
    train.main(["--task", task, "--preset", "tiny", "--iters", "1", "--batch", "2", "--crop", "16",
                "--T", "20", "--val", str(pairs), "--out", str(tmp_path / "run")])
    flat_first = f"(flat colours for the first {tasks.TASKS[task].colour_epochs} epochs)"
    assert (flat_first in capsys.readouterr().out) == (tasks.TASKS[task].colour_epochs > 0)  # the recipe says so
    sample.main(["--checkpoint", str(tmp_path / "run" / "last.pt"), "--input", str(pairs),
                 "--out", str(tmp_path / "restored"), "--device", "cpu"])
    restored, gt = data.load_image(tmp_path / "restored" / "0.png"), data.load_image(pairs / "GT" / "0.png")
    assert restored.shape == gt.shape and 0 <= restored.min() <= restored.max() <= 1
    assert json.loads((tmp_path / "restored" / "metrics.json").read_text())["complete"]
