"""The model card shows the loss curve (a PNG, drawn with matplotlib from the `train` extra that
scripts/setup installs) right above the evaluation tables: the shipped card, and the card that
scripts/ship_model.py writes for a run."""

import importlib.util
import re
import sys
import tomllib

from infill_lsp.train.corpus import Corpus, ManifestEntry
from infill_lsp.train.loop import DataConfig, OptimConfig, TrainConfig, train, write_loss_curve, write_model_card

from conftest import ROOT, TINY_MODEL

PNG = b"\x89PNG\r\n\x1a\n"
IMAGE = re.compile(r"^!\[[^\]]+\]\(loss_curve\.png\)$", re.M)


def sections(card: str) -> list[str]:
    return re.findall(r"^## (.+)$", card, re.M)


def test_the_shipped_card_shows_the_loss_curve_above_the_evaluation():
    shipped = ROOT / "infill_lsp" / "models" / "infill-small"
    card = (shipped / "README.md").read_text()
    assert (shipped / "loss_curve.png").read_bytes().startswith(PNG)
    image = IMAGE.search(card)
    assert image, "the card embeds loss_curve.png"
    assert sections(card)[:2] == ["Training loss", "Evaluation"]
    assert card.index("## Training loss") < image.start() < card.index("## Evaluation")
    assert "| subset | problems | pass@1 top-ranked" in card  # the evaluation table follows


def test_matplotlib_is_in_the_train_extra_that_setup_installs():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(dep.startswith("matplotlib") for dep in project["optional-dependencies"]["train"])
    assert '".[test,train]"' in (ROOT / "scripts" / "setup").read_text()
    import matplotlib  # installed here by scripts/setup

    assert matplotlib.__version__


def test_without_matplotlib_the_card_says_where_the_data_is(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    history = [{"step": 10, "loss": 5.0}, {"step": 20, "loss": 4.0}]
    write_loss_curve(tmp_path, history)
    write_model_card(tmp_path, TrainConfig(), [], history, 1000, None, {"step": 20})
    card = (tmp_path / "README.md").read_text()
    assert not (tmp_path / "loss_curve.png").exists() and (tmp_path / "loss.csv").exists()
    assert not IMAGE.search(card) and "no `loss_curve.png`: matplotlib" in card


def test_ship_model_writes_the_png_and_the_card_with_it_above_the_evaluation(tmp_path, monkeypatch):
    samples = sorted((ROOT / "fixtures" / "samples").iterdir())
    texts = [samples[i % len(samples)].read_text() for i in range(40)]
    corpus = Corpus(texts=texts, manifest=[ManifestEntry("fixtures", "0", "Apache-2.0")],
                    paths=[f"/repo/file{i}.py" for i in range(40)], languages=["python"] * 40)
    config = TrainConfig(data=DataConfig(sequence_tokens=100, holes_per_sequence=4),
                         optim=OptimConfig(steps=3, batch_size=2, warmup=1, log_every=1))
    run = tmp_path / "run"
    train(config, run, init=str(TINY_MODEL), corpus=corpus, device="cpu")
    evaluation = tmp_path / "eval.md"
    evaluation.write_text("| subset | problems | pass@1 top-ranked |\n|---|---|---|\n| single-line | 2 | 0.0% (0) |\n")

    spec = importlib.util.spec_from_file_location("ship_model", ROOT / "scripts" / "ship_model.py")
    ship_model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship_model)
    monkeypatch.setattr(ship_model, "ROOT", tmp_path)  # -> tmp_path/infill_lsp/models/NAME, not the package
    monkeypatch.setattr(sys, "argv", ["ship_model.py", str(run), "--name", "card-test", "--eval", str(evaluation)])
    ship_model.main()

    shipped = tmp_path / "infill_lsp" / "models" / "card-test"
    assert (shipped / "loss_curve.png").read_bytes().startswith(PNG)
    card = (shipped / "README.md").read_text()
    assert sections(card)[:2] == ["Training loss", "Evaluation"]
    assert card.index("## Training loss") < IMAGE.search(card).start() < card.index("## Evaluation")
    assert card.index("| single-line | 2 |") > card.index("## Evaluation")
    assert not (ROOT / "infill_lsp" / "models" / "card-test").exists()
