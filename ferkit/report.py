"""What ``ferkit analyse`` leaves in its output folder, the summaries of each recording, and ``ferkit report``.

    DIR/faces/recording=ID/part-0.parquet    one row per face per analysed frame (a Parquet dataset)
    DIR/frames/recording=ID/part-0.parquet   --aggregate-only: one row per analysed frame, no person
    DIR/recordings/ID/summary.json           the marker of a finished recording: fingerprint, chunks, nodes
    DIR/recordings/ID/people.csv             per person: time seen, share of each emotion
    DIR/recordings/ID/timeline.csv           per time bin, the whole group: faces, share of each emotion
    DIR/recordings/ID/report.png             the group's shares over time and each person's timeline
    DIR/people.csv, DIR/timeline.csv         the same for every recording, with a recording column
    DIR/errors.csv                           recordings that failed, with the reason

``ferkit report DIR`` rebuilds the summaries and images from the Parquet files alone.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
from pathlib import Path

from ferkit.files import write_text
from ferkit.plots import pyplot, save_figure
from ferkit.recordings import write_parquet
from ferkit.settings import EMOTION_COLORS, UNKNOWN_COLOR

# pandas and pyarrow are imported where a table is read: importing ferkit must stay fast.

ERROR_COLUMNS = ["recording", "source", "error", "fingerprint"]


def partition(out: Path, recording_id: str, aggregate: bool) -> Path:
    return Path(out) / ("frames" if aggregate else "faces") / f"recording={recording_id}" / "part-0.parquet"


def summary_path(out: Path, recording_id: str) -> Path:
    return Path(out) / "recordings" / recording_id / "summary.json"


def read_summary(out: Path, recording_id: str) -> dict | None:
    try:
        return json.loads(summary_path(out, recording_id).read_text())
    except (OSError, ValueError):
        return None


def finished(out: Path, recording_id: str, fingerprint: str) -> bool:
    """Whether the recording was finished with this fingerprint (its marker and its rows are there)."""
    summary = read_summary(out, recording_id)
    return bool(summary and summary.get("fingerprint") == fingerprint
                and partition(out, recording_id, summary.get("aggregate_only", False)).exists())


def read_errors(out: Path) -> dict[str, dict]:
    try:
        with open(Path(out) / "errors.csv", newline="") as handle:
            return {row["recording"]: row for row in csv.DictReader(handle)}
    except OSError:
        return {}


def write_errors(out: Path, errors: dict[str, dict]) -> None:
    """errors.csv: one row per failed recording (rewritten whole, atomically); removed when none failed."""
    path = Path(out) / "errors.csv"
    if not errors:
        path.unlink(missing_ok=True)
        return
    text = io.StringIO()
    writer = csv.DictWriter(text, ERROR_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(errors.values())
    write_text(path, text.getvalue())


def commit_recording(out: Path, recording, table, summary: dict) -> None:
    """A finished recording: its rows (replacing any from other settings), its summaries and report, then its
    marker, last, so that a recording with a marker is complete."""
    aggregate = summary["aggregate_only"]
    shutil.rmtree(partition(out, recording.id, not aggregate).parent, ignore_errors=True)
    summary_path(out, recording.id).unlink(missing_ok=True)
    write_parquet(table, partition(out, recording.id, aggregate), {"fingerprint": summary["fingerprint"]})
    write_reports(out, recording.id, table, summary)
    write_text(summary_path(out, recording.id), json.dumps(summary, indent=1))


def class_names_of(table) -> list[str]:
    return [c[2:] for c in table.columns if c.startswith("p_")]


def people_table(faces, frame_seconds: float):
    """Per person (face_id): first and last time seen, analysed frames seen, seconds seen (frames x the time
    between analysed frames) and share_<class>: the share of those frames with that label."""
    import pandas as pd

    names = class_names_of(faces)
    grouped = faces.groupby("face_id")
    people = pd.DataFrame({"first_seen": grouped["time"].min(), "last_seen": grouped["time"].max(),
                           "frames": grouped.size()})
    people["seconds_seen"] = (people["frames"] * frame_seconds).round(3)
    shares = pd.crosstab(faces["face_id"], faces["label"], normalize="index") if len(faces) else None
    for name in names:
        people[f"share_{name}"] = shares[name] if shares is not None and name in shares else 0.0
    return people.fillna(0.0).reset_index()


def timeline_table(table, bin_seconds: float):
    """Per time bin, the whole group: faces (rows), share_<class> of the faces with each label, mean_p_<class>.

    ``table`` is the per-face table, or --aggregate-only's per-frame table (faces, n_<class>, p_<class> means).
    """
    import numpy as np
    import pandas as pd

    names = class_names_of(table)
    if "faces" in table:  # per frame: weigh each frame's means by its faces
        counts = table[[f"n_{n}" for n in names]].set_axis(names, axis=1)
        means = table[[f"p_{n}" for n in names]].fillna(0.0).mul(table["faces"], axis=0).set_axis(names, axis=1)
        faces = table["faces"]
    else:
        counts = pd.get_dummies(table["label"]).reindex(columns=names, fill_value=0).astype(int)
        means, faces = table[[f"p_{n}" for n in names]].set_axis(names, axis=1), pd.Series(1, index=table.index)
    bins = (np.floor(table["time"] / bin_seconds) * bin_seconds).round(3)
    total = faces.groupby(bins).sum()
    result = pd.DataFrame({"faces": total})
    if "face_id" in table:
        result["people"] = table.groupby(bins)["face_id"].nunique()
    shares = counts.groupby(bins).sum().div(total.replace(0, np.nan), axis=0)
    mean_p = means.groupby(bins).sum().div(total.replace(0, np.nan), axis=0)
    for name in names:
        result[f"share_{name}"] = shares[name].round(4)
    for name in names:
        result[f"mean_p_{name}"] = mean_p[name].round(4)
    return result.rename_axis("bin_start").reset_index()


def write_reports(out: Path, recording_id: str, table, summary: dict) -> None:
    """people.csv (unless aggregate-only), timeline.csv and report.png in DIR/recordings/ID/."""
    folder = Path(out) / "recordings" / recording_id
    timeline = timeline_table(table, summary["bin_seconds"])
    write_text(folder / "timeline.csv", timeline.to_csv(index=False))
    people = None
    if not summary["aggregate_only"]:
        people = people_table(table, summary["frame_seconds"])
        write_text(folder / "people.csv", people.to_csv(index=False))
    else:
        (folder / "people.csv").unlink(missing_ok=True)
    draw_report(timeline, None if summary["aggregate_only"] else table, folder / "report.png", recording_id,
                summary["frame_seconds"])


def _rgb(name: str) -> tuple[float, float, float]:
    b, g, r = EMOTION_COLORS.get(name, UNKNOWN_COLOR)
    return r / 255, g / 255, b / 255


def draw_report(timeline, faces, path: Path, title: str, frame_seconds: float) -> None:
    """The group's share of each emotion per time bin (stacked), and under it one lane per person coloured by
    the label at each analysed frame."""
    plt = pyplot()
    names = [c[6:] for c in timeline.columns if c.startswith("share_")]
    people = sorted(faces["face_id"].unique()) if faces is not None and len(faces) else []
    fig, axes = plt.subplots(2 if people else 1, 1, figsize=(10, 3 + 0.3 * min(len(people), 30)), squeeze=False,
                             sharex=True)
    top = axes[0, 0]
    if len(timeline):  # each bin drawn to its end: the last row repeated one bin later
        step = timeline["bin_start"].diff().min() if len(timeline) > 1 else 1.0
        ends = list(timeline["bin_start"]) + [timeline["bin_start"].iloc[-1] + step]
        top.stackplot(ends, *[list(timeline[f"share_{n}"].fillna(0)) + [timeline[f"share_{n}"].fillna(0).iloc[-1]]
                              for n in names], labels=names, colors=[_rgb(n) for n in names], step="post")
        top.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    top.set_ylim(0, 1)
    top.set_ylabel("share of faces")
    fig.suptitle(title, fontsize=9)
    if people:
        lanes = axes[1, 0]
        for lane, face_id in enumerate(people[:30]):
            rows = faces[faces["face_id"] == face_id]
            lanes.broken_barh([(t, frame_seconds) for t in rows["time"]], (lane - 0.4, 0.8),
                              facecolors=[_rgb(label) for label in rows["label"]])
        lanes.set_yticks(range(min(len(people), 30)), [f"person {p}" for p in people[:30]], fontsize=7)
        lanes.set_xlabel("time (s)")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def write_combined(out: Path) -> None:
    """DIR/people.csv and DIR/timeline.csv: every finished recording's summaries, with a recording column."""
    import pandas as pd

    folder = Path(out) / "recordings"
    for name in ("people.csv", "timeline.csv"):
        parts = [pd.read_csv(path).assign(recording=path.parent.name) for path in sorted(folder.glob(f"*/{name}"))
                 if (path.parent / "summary.json").exists()]
        if parts:
            table = pd.concat(parts, ignore_index=True)
            table = table[["recording"] + [c for c in table if c != "recording"]]
            write_text(Path(out) / name, table.to_csv(index=False))
        else:
            (Path(out) / name).unlink(missing_ok=True)


def rebuild(out: Path, bin_seconds: float | None = None) -> list[str]:
    """``ferkit report DIR``: every finished recording's summaries and image again, from its Parquet rows."""
    import pandas as pd

    out = Path(out)
    if not (out / "recordings").is_dir():
        raise FileNotFoundError(f"{out}: no analysis here (no recordings/ folder); run ferkit analyse first")
    done = []
    for marker in sorted((out / "recordings").glob("*/summary.json")):
        summary = json.loads(marker.read_text())
        path = partition(out, marker.parent.name, summary["aggregate_only"])
        if not path.exists():
            continue
        if bin_seconds is not None:
            summary["bin_seconds"] = bin_seconds
        write_reports(out, marker.parent.name, pd.read_parquet(path), summary)
        done.append(marker.parent.name)
    write_combined(out)
    return done


def add_command(commands) -> None:
    report = commands.add_parser(
        "report", help="rebuild the summaries and report images of an analyse output folder from its Parquet rows",
        description="Rebuild people.csv, timeline.csv and report.png of every finished recording in DIR (written by "
                    "`analyse`), and DIR/people.csv and DIR/timeline.csv, from the Parquet rows alone.")
    report.add_argument("dir", help="the output folder of `analyse`")
    report.add_argument("--bin-seconds", type=float, help="time bin of the timelines (default: the analysis's)")
    report.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    done = rebuild(Path(args.dir), args.bin_seconds)
    if not done:
        raise FileNotFoundError(f"{args.dir}: no finished recording to report on")
    print(f"rebuilt the summaries of {len(done)} recording(s) in {args.dir}", file=sys.stderr)
    return 0
