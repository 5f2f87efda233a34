"""The table across runs (`results RUN_DIR [RUN_DIR ...]`): one table per evaluation kind,
the studies as rows and a column group per run, in Markdown, LaTeX or CSV. Its cells are
each run's own table's (`results.readable`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from orchestrator.engine.metrics import lower_is_better
from orchestrator.results import TABLE_TITLES, md_table, readable


def across_runs(runs: dict[str, pd.DataFrame], fmt: str) -> str:
    """One table per evaluation kind (rating, top-N) over several runs' results tables
    (label -> frame, the label naming the run's dataset and split): the studies as rows,
    one column group per run with its test metrics as in its own table (mean ± std, and
    (+)/(-) against its best baseline), the best value of each column in bold. `fmt`:
    md, latex (pandas' Styler, booktabs rules) or csv. Runs whose tables of one kind hold
    different metrics (another K, another task) cannot be aligned: a ValueError names them."""
    kinds: dict[str, list[tuple[str, pd.DataFrame]]] = {}
    for label, frame in runs.items():
        for name, group in frame.groupby("table", sort=False):
            kinds.setdefault(str(name), []).append((label, group))
    parts = []
    for kind, groups in kinds.items():
        metrics = {label: _test_metrics(group) for label, group in groups}
        (first, want), *rest = metrics.items()
        for label, have in rest:
            if have != want:
                raise ValueError(
                    f"results: the {TABLE_TITLES.get(kind, kind)} tables of {first} and "
                    f"{label} cannot be aligned: {first} has {want}, {label} has {have}"
                )
        text, best = _aligned(groups, want)
        title = TABLE_TITLES.get(kind, kind)
        if fmt == "csv":
            flat = text.copy()
            flat.columns = [f"{label}: {metric}" for label, metric in text.columns]
            parts.append(
                flat.rename_axis("study").reset_index().assign(table=kind).to_csv(index=False)
            )
        elif fmt == "latex":
            parts.append(f"% {title}\n" + _latex(text, best))
        elif fmt == "md":
            header = ["study"] + [f"{label}: {metric}" for label, metric in text.columns]
            rows = [
                [str(study)] + [f"**{v}**" if best.loc[study, c] else v for c, v in row.items()]
                for study, row in text.iterrows()
            ]
            parts.append("\n".join([f"## {title}", "", md_table(header, rows)]))
        else:
            raise ValueError(f"--format {fmt!r}: expected md, latex or csv for several runs")
    note = "\nBold: the best value of its column; (+)/(-) and p as in each run's own table.\n"
    return "\n".join(parts) + (note if fmt == "md" else "")


def _test_metrics(group: pd.DataFrame) -> list[str]:
    return [
        c
        for c in group.columns
        if c.startswith("test/") and not c.endswith("_std") and group[c].notna().any()
    ]


def _aligned(
    groups: list[tuple[str, pd.DataFrame]], metrics: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The cells as text (`readable`'s) and where each column's best value is, studies as
    rows in order of first appearance, (run label, metric) columns."""
    text, value = {}, {}
    for label, group in groups:
        shown = readable(group, "all").set_index(group["study"].to_numpy())
        for metric in metrics:
            text[label, metric] = shown[metric]
            value[label, metric] = group.set_index("study")[metric].astype(float)
    text_frame = pd.DataFrame(text).fillna("")
    values = pd.DataFrame(value).reindex(text_frame.index)
    best = pd.DataFrame(False, index=values.index, columns=values.columns)
    for col in values.columns:
        column = values[col]
        if column.notna().any():
            top = column.min() if lower_is_better(col[1]) else column.max()
            best[col] = column == top
    return text_frame, best


def _latex(text: pd.DataFrame, best: pd.DataFrame) -> str:
    """A booktabs tabular through pandas' Styler: column groups per run, best in bold."""

    def cell(value: str) -> str:
        escaped = "".join(_LATEX_ESCAPES.get(ch, ch) for ch in value)
        return escaped.replace("±", r"$\pm$")

    frame = text.copy()
    frame.columns = pd.MultiIndex.from_tuples(
        [(cell(label), cell(metric)) for label, metric in text.columns]
    )
    frame.index = [cell(str(s)) for s in text.index]
    props = pd.DataFrame(
        np.where(best.to_numpy(), "textbf:--rwrap;", ""), index=frame.index, columns=frame.columns
    )
    styler = frame.style.format(cell).apply(lambda _: props, axis=None)
    return styler.to_latex(
        hrules=True, multicol_align="c", column_format="l" + "r" * len(frame.columns)
    )


_LATEX_ESCAPES = {c: "\\" + c for c in "&%$#_{}"} | {
    "~": r"\textasciitilde{}",
    "^": r"\^{}",
    "\\": r"\textbackslash{}",
}
