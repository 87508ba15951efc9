"""The command line, as a user runs it."""

import subprocess
import sys

import pytest

from ferkit import data
from ferkit.cli import main
from ferkit.sample import write_image_layout


def test_convert_writes_csv_and_prints_counts(cartoon, tmp_path, capsys):
    source = write_image_layout(cartoon, tmp_path / "fer.zip")
    assert main(["convert", str(source), str(tmp_path / "out.csv"), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert f"wrote {len(cartoon)} rows" in captured.err  # messages on stderr, the table (the result) on stdout
    assert captured.out.splitlines()[-1].split() == ["all"] + ["12"] * 7 + ["84"]
    again = data.load_fer2013(tmp_path / "out.csv")
    assert (again.images == cartoon.images).all()


def test_convert_skip_bad_reports_and_lists(cartoon, tmp_path, capsys):
    source = write_image_layout(cartoon, tmp_path / "folder")
    broken = sorted((source / "train" / "happy").iterdir())[0]
    broken.write_bytes(b"")
    out_csv = tmp_path / "out.csv"
    assert main(["convert", str(source), str(out_csv), "--no-progress"]) == 2
    assert "empty file (0 bytes)" in capsys.readouterr().err
    assert main(["convert", str(source), str(out_csv), "--no-progress", "--skip-bad"]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 bad record(s):" in err and broken.name in err
    assert broken.name in (tmp_path / "out.csv.skipped.txt").read_text()
    assert len(data.load_fer2013(out_csv)) == len(cartoon) - 1


def test_info_with_subset_and_env_setting(cartoon, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(data.DATA_ENV, str(data.write_npz(cartoon, tmp_path / "c.npz")))
    assert main(["info", "--classes", "fer5"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("split"))
    assert header.split() == ["split", "angry", "happy", "sad", "surprise", "neutral", "total",
                              "mean", "contrast", "sharpness"]
    assert main(["info", "--merge", "disgust=angry"]) == 0
    assert "(changed: {'disgust': 'angry'})" in capsys.readouterr().out


def test_malformed_merge(cartoon, tmp_path, capsys):
    source = data.write_npz(cartoon, tmp_path / "c.npz")
    assert main(["info", str(source), "--merge", "disgust"]) == 2
    assert "expected SOURCE=TARGET" in capsys.readouterr().err


def test_unknown_output_format_fails_with_status_2_and_writes_nothing(cartoon, tmp_path, capsys):
    source = data.write_npz(cartoon, tmp_path / "c.npz")
    assert main(["convert", str(source), str(tmp_path / "out.parquet")]) == 2
    assert "out.parquet: the output must end in .csv" in capsys.readouterr().err
    assert not (tmp_path / "out.parquet").exists()


@pytest.mark.parametrize("command", [[], ["convert"], ["info"], ["train"], ["evaluate"], ["ensemble"], ["interpolate"], ["distill"], ["predict"], ["demo"]])
def test_every_command_has_help(command):
    result = subprocess.run([sys.executable, "-m", "ferkit", *command, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage: python -m ferkit" in result.stdout


def test_the_csv_option_names_the_columns_it_writes(capsys):
    from ferkit.prediction import face_rows

    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    columns = [c for c in face_rows([], ["happy"]).columns if not c.startswith("p_")]
    assert ", ".join(columns) + ", p_<class>" in text
