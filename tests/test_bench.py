"""bench.py ablate --quick end to end (every variant, the samplers' sweep, the denoising starts),
its resumability, and bench.py figures with and without matplotlib."""
import json
import sys

import pytest
import torch

import bench
import data


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    """(folder, printed output) of one quick ablation: 2 steps per variant on 16 x 16 crops."""
    root = tmp_path_factory.mktemp("ablate")
    bench.main(["ablate", "--quick", "--device", "cpu", "--out", str(root)])
    return root


@pytest.fixture(autouse=True)
def two_validation_images(monkeypatch):
    """bench.py restores the fixed sets whole (8 images); 2 of them test the same code in a quarter of the time."""
    monkeypatch.setattr(data, "DEFAULT_VAL_LEN", 2)


def rows_of(root):
    return [json.loads(line) for line in open(root / "ablate.jsonl")]


def test_ablate_quick_trains_every_variant_and_writes_a_table(ablation):
    rows = rows_of(ablation)
    runs = [r for r in rows if r["kind"] == "run"]
    variants = bench.ablation_variants(bench.tasks.TASKS["derain"].lam)
    assert [(r["variant"], r["seed"]) for r in runs] == [(n, s) for n, _, _, seeds in variants for s in seeds]
    assert all(r["step"] == 2 and 0 < r["val"]["psnr_y"] < 100 and r["unseen"] for r in runs)
    assert all(r["curve"][-1][0] == 2 for r in runs)  # validated at the last step
    nfe = [r for r in rows if r["kind"] == "nfe"]
    assert {r["sampler"] for r in nfe} == set(bench.irsde.SAMPLERS)
    assert {r["start"] for r in rows if r["kind"] == "denoise"} >= {"T = 10", "input"}
    table = (ablation / "ablate.md").read_text()
    for name, *_ in variants:
        assert f"| {name} |" in table
    lines = [line for line in table.splitlines() if line.startswith("|")]
    header_cells = lines[0].count("|")
    assert all(line.count("|") == header_cells for line in lines[: len(runs) + 3])  # run table well formed


def test_ablate_does_not_retrain_a_finished_variant(ablation, capsys):
    checkpoints = sorted(ablation.glob("*/last.pt"))
    stamps = [p.stat().st_mtime_ns for p in checkpoints]
    before = {(r["folder"]): r["wall_s"] for r in rows_of(ablation) if r["kind"] == "run"}
    bench.main(["ablate", "--quick", "--device", "cpu", "--out", str(ablation)])
    assert [p.stat().st_mtime_ns for p in checkpoints] == stamps
    assert capsys.readouterr().out.count("finished already") == len(checkpoints)
    assert {r["folder"]: r["wall_s"] for r in rows_of(ablation) if r["kind"] == "run"} == before


def test_figures_without_matplotlib_says_how_to_get_it(ablation, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    with pytest.raises(SystemExit, match="pip install matplotlib"):
        bench.main(["figures", "--out", str(ablation), "--figures", str(ablation / "fig")])


def test_figures_without_an_ablation_names_the_missing_file(tmp_path):
    with pytest.raises(SystemExit, match="ablate.jsonl: not found"):
        bench.main(["figures", "--out", str(tmp_path), "--figures", str(tmp_path / "fig")])


def test_figures_draws_the_three_plots(ablation, tmp_path):
    pytest.importorskip("matplotlib", reason="bench.py figures needs matplotlib (pip install matplotlib)")
    bench.main(["figures", "--out", str(ablation), "--figures", str(tmp_path)])
    for name in ("training.png", "samplers.png", "schedules.png"):
        picture = data.load_image(tmp_path / name)
        assert picture.shape[1] > 200 and picture.std() > 0.05  # drawn, not blank


def test_ablate_budget_scales_the_learning_rate_halvings(tmp_path, monkeypatch):
    """--iters 20000 --net small (the GPU check): the tiny recipe's halvings at 963 and 1225 of 1400
    steps move to 13757 and 17500."""
    seen = []
    monkeypatch.setattr(bench.train, "main", seen.append)
    args = bench.argparse.Namespace(iters=20000, net="small", device="cpu", val_every=200, quick=False, fp32=False)
    bench.train_variant(tmp_path / "run", "derain", ["--loss", "cnn"], 1, args)
    run = bench.flags.fill_defaults(bench.flags.parse(seen[0]))
    assert (run.iters, run.milestones, run.net, run.loss) == (20000, [13757, 17500], "small", "cnn")
    assert not run.fp32


def test_ablate_fp32_reaches_every_variant_run(tmp_path, monkeypatch):
    """--fp32 (the README's table, on any CPU) is passed to new and to resumed variant runs."""
    bench.train.main(["--task", "derain", "--preset", "tiny", "--iters", "1", "--crop", "16", "--batch", "1",
                      "--val-images", "1", "--T", "10", "--sample-steps", "1", "--out", str(tmp_path / "stopped")])
    ckpt = torch.load(tmp_path / "stopped" / "last.pt", weights_only=False)
    ckpt["config"]["args"]["iters"] = 2  # an interrupted variant: step 1 of 2
    torch.save(ckpt, tmp_path / "stopped" / "last.pt")
    seen = []
    monkeypatch.setattr(bench.train, "main", seen.append)
    args = bench.argparse.Namespace(iters=None, net=None, device="cpu", val_every=200, quick=False, fp32=True)
    for folder in ("new", "stopped"):
        bench.train_variant(tmp_path / folder, "derain", [], 0, args)
    assert [argv[-1] for argv in seen] == ["--fp32", "--fp32"] and seen[1][0] == "--resume"


def test_sample_sweep_refuses_step_counts_the_checkpoint_cannot_run_before_any_row(ablation, capsys):
    checkpoint = next(ablation.glob("ir-sde-3-posterior-steps*/last.pt"))  # T = 10 in --quick
    with pytest.raises(SystemExit, match=r"--sample-steps 11 0: .*runs 1 to 10 steps"):
        bench.main(["sample", "--checkpoint", str(checkpoint), "--device", "cpu", "--steps", "5", "11", "0"])
    assert capsys.readouterr().out == ""
    bench.main(["sample", "--checkpoint", str(checkpoint), "--device", "cpu", "--sample-steps", "2",
                "--samplers", "posterior", "sde"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| posterior") or
            line.startswith("| sde")]
    assert [row.split(" | ")[1:3] for row in rows] == [["2", "2"], ["2", "2"]]  # steps, evaluations counted
    cnn = next(ablation.glob("cnn-*/last.pt"))
    with pytest.raises(SystemExit, match="CNN baseline restores in one pass"):
        bench.main(["sample", "--checkpoint", str(cnn), "--device", "cpu"])


def test_compare_scores_and_pictures_each_checkpoint(ablation, tmp_path, capsys):
    paths = [str(next(ablation.glob(f"{name}*/last.pt"))) for name in ("ir-sde-3-posterior-steps", "cnn-")]
    bench.main(["compare", "--checkpoints", *paths, "--device", "cpu", "--out", str(tmp_path)])
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][1:]
    assert [(r[0].strip("| "), r[1]) for r in rows] == [(name, split) for split in ("val", "unseen") for name in
                                                        ("input (LQ)", *(bench.Path(p).parent.name for p in paths))]
    assert all(0 <= float(r[4]) < 1 for r in rows)  # GMSD
    shifts = [float(r[6].rstrip(" |")) for r in rows]
    assert all(0 <= s <= 255 for s in shifts) and shifts[0] > 0  # colour shift: the rainy input has one
    for split in ("val", "unseen"):
        picture = data.load_image(tmp_path / f"compare_{split}.png")
        assert picture.shape[2] == 4 * bench.train.VAL_CROP + 3 * bench.restore.GAP  # LQ, 2 models, GT


def test_train_counts_the_flops_of_forward_and_backward(capsys):
    """The FLOPs of a training step are counted, not estimated: for the CNN baseline (one network
    evaluation) they are forward + backward, 2 to 3 times the forward's alone."""
    from torch.utils.flop_counter import FlopCounterMode
    targs = bench.flags.fill_defaults(bench.flags.parse(["--task", "derain", "--preset", "tiny", "--loss", "cnn",
                                                         "--batch", "2", "--fp32"]))
    net, _ = bench.checkpoint.build(targs, torch.device("cpu"))
    lq, _ = bench.fixed_batch(targs, torch.device("cpu"))
    with FlopCounterMode(display=False) as forward:
        net(lq, None, None)
    ratio = bench.step_flops(bench.training_step(targs, torch.device("cpu"))[0], steps=1) / forward.get_total_flops()
    assert 2 < ratio <= 3
    bench.main(["train", "--presets", "tiny", "--batch", "2", "--device", "cpu"])
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| tiny"))
    assert row.split(" | ")[2] == "2 x 32^2" and row.split(" | ")[7].endswith("%")


def test_gallery_draws_a_row_per_checkpoint(ablation, tmp_path, capsys):
    paths = [str(next(ablation.glob(f"{name}*/last.pt"))) for name in ("ir-sde-3-posterior-steps", "denoising")]
    bench.main(["gallery", "--checkpoints", *paths, "--device", "cpu", "--out", str(tmp_path / "gallery.png")])
    picture = data.load_image(tmp_path / "gallery.png")
    row = bench.restore.LABEL_HEIGHT + bench.train.VAL_CROP
    assert picture.shape[1:] == (2 * row + bench.restore.GAP, 3 * bench.train.VAL_CROP + 2 * bench.restore.GAP)
    assert "2 rows" in capsys.readouterr().out
