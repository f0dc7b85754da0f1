"""Build ``report.md`` and a self-contained ``report.html`` from saved results only.

Nothing here simulates: :func:`build_report` reads ``OUT/<experiment>/metrics.json`` and, with
``rebuild=True`` (what ``muonflow report OUT`` does), re-evaluates every experiment's checks,
notes and figures from its saved series (``series.npz`` + ``series.json``). The report counts
claim checks (they test the paper) and sanity checks (implementation, numerics, regressions)
separately; its headline is the claim checks. A folder that lacks experiments, or holds a
corrupt result, is reported as such (and ``muonflow report`` exits non-zero).
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .experiments.store import (
    METRICS,
    CorruptResultError,
    atomic_write_many,
    atomic_write_text,
    check_writable,
    counts,
    dumps,
    figure_path,
    load_metrics,
    load_series,
    passed,
    ratio,
)


@dataclass
class Report:
    """What :func:`build_report` found: results in registry order, what is missing or broken."""

    results: list[dict[str, Any]]
    missing: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.missing and not self.problems

    @property
    def all_pass(self) -> bool:
        return self.complete and all(passed(m) for m in self.results)


def _rebuild(out: Path, m: dict[str, Any]) -> dict[str, Any]:
    """Re-evaluate checks, notes and figures of ``m`` from its saved series; rewrite metrics."""
    from .experiments import REGISTRY
    from .experiments.base import config_from_dict
    from .experiments.evaluate import evaluate

    exp = REGISTRY[m["name"]]
    if m.get("version", exp.version) != exp.version:
        raise CorruptResultError(
            f"{m['name']}: saved by version {m.get('version')} of the experiment, the code is "
            f"version {exp.version}; rerun it: muonflow run {m['name']} --out {out}"
        )
    folder = out / m["name"]
    try:
        cfg = config_from_dict(exp.config, m["config"])
    except (TypeError, ValueError) as exc:
        raise CorruptResultError(
            f"{m['name']}: saved config does not fit the code ({exc}); rerun it: "
            f"muonflow run {m['name']} --out {out}"
        ) from None
    series = load_series(folder)
    checks, notes, figures = evaluate(exp, cfg, series, folder)
    m = {**m, "checks": checks, "notes": notes, "figures": figures}
    atomic_write_text(folder / METRICS, dumps(m))
    return m


def collect(out: Path, *, rebuild: bool = False) -> Report:
    """The results under ``out`` in registry order (rebuilt from their series if asked)."""
    from .experiments import REGISTRY

    out = Path(out)
    rep = Report(results=[])
    for name in REGISTRY:
        path = out / name / METRICS
        if not path.exists():
            rep.missing.append(name)
            continue
        try:
            m = load_metrics(path)
            if m["name"] != name:
                raise CorruptResultError(
                    f"corrupt result {path} (it names {m['name']!r}); rerun it: "
                    f"muonflow run {name} --out {out}"
                )
            if rebuild and m["status"] == "ok":
                m = _rebuild(out, m)
            _check_figures(out / name, m)
        except CorruptResultError as exc:
            rep.problems.append(str(exc))
            continue
        except Exception as exc:  # a check or figure that cannot be evaluated on the series
            rep.problems.append(
                f"{name}: rebuilding checks and figures from the saved series failed "
                f"({type(exc).__name__}: {exc}); rerun it: muonflow run {name} --out {out}"
            )
            continue
        rep.results.append(m)
    return rep


def _check_figures(folder: Path, m: dict[str, Any]) -> None:
    """Every figure ``m`` names is a file inside ``folder`` (:func:`figure_path`)."""
    figures = m.get("figures", [])
    if not isinstance(figures, list):
        raise CorruptResultError(f"corrupt result {folder / METRICS} (figures is not a list)")
    for fig in figures:
        figure_path(folder, fig)


def _fmt(x: Any) -> str:
    if isinstance(x, list):
        return "[" + ", ".join(_fmt(v) for v in x) + "]"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _status(m: dict[str, Any]) -> str:
    if m["status"] != "ok":
        return "ERROR"
    return "pass" if passed(m) else "FAIL"


def _summary_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for m in results:
        c = counts(m)
        rows.append([
            m["name"], ratio(c["claim"]), ratio(c["sanity"]),
            f"{m.get('wall_time_s', 0.0):.1f}", f"{m.get('cpu_time_s', 0.0):.1f}", _status(m),
        ])  # fmt: skip
    return rows


SUMMARY = ["experiment", "claim checks", "sanity checks", "wall [s]", "CPU [s]", "status"]
HEADER = ["check", "value", "threshold", "result", "why this threshold", "fails if"]


def _check_rows(m: dict[str, Any], kind: str) -> list[list[str]]:
    return [
        [
            name,
            _fmt(c["value"]),
            f"{c.get('relation', '')} {_fmt(c['threshold'])}",
            "pass" if c["passed"] else "FAIL",
            c.get("why", ""),
            c.get("catches", ""),
        ]
        for name, c in m["checks"].items()
        if c["kind"] == kind
    ]


def _claim_index(results: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [f"{m['name']}: {name}", _fmt(c["value"]),
         f"{c.get('relation', '')} {_fmt(c['threshold'])}", "pass" if c["passed"] else "FAIL",
         c.get("catches", "")]
        for m in results for name, c in m["checks"].items() if c["kind"] == "claim"
    ]  # fmt: skip


def _headline(rep: Report) -> list[str]:
    tot = {"claim": [0, 0], "sanity": [0, 0]}
    for m in rep.results:
        for k, (a, b) in counts(m).items():
            tot[k][0] += a
            tot[k][1] += b
    n_exp = sum(passed(m) for m in rep.results)
    lines = [
        f"**{tot['claim'][0]}/{tot['claim'][1]} claim checks pass** "
        f"(sanity checks: {tot['sanity'][0]}/{tot['sanity'][1]}); "
        f"{n_exp}/{len(rep.results)} experiments pass every check.",
    ]
    if rep.missing:
        lines.append(
            f"**Partial: {len(rep.missing)} experiment(s) missing:** {', '.join(rep.missing)} "
            "(run `muonflow reproduce` with this folder as --out)."
        )
    lines += [f"**Problem:** {p}" for p in rep.problems]
    return lines


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _provenance_line(m: dict[str, Any]) -> str:
    p = m.get("provenance", {})
    return (
        f"muonflow {p.get('muonflow')} (git {p.get('git')}), torch {p.get('torch')}, "
        f"numpy {p.get('numpy')}, scipy {p.get('scipy')}, python {p.get('python')}; "
        f"{p.get('cpu')} ({p.get('cpu_threads')} threads)"
        + (f", GPU {p['gpu']}" if p.get("gpu") else "")
        + f"; profile {m.get('profile')}, seed {m.get('seed')}, wall time "
        f"{m.get('wall_time_s', 0.0):.1f} s, CPU time {m.get('cpu_time_s', 0.0):.1f} s"
    )


INTRO = (
    "*Move on Muon: a Hamiltonian probability gradient flow perspective of the Muon optimizer* "
    "— one experiment per claim. **Claim checks** test the paper; **sanity checks** test the "
    "implementation and the numerics (references, round-off, regressions of the library "
    "against itself). Every check names the bug it would catch."
)


def render_markdown(rep: Report) -> str:
    results = rep.results
    out = ["# muonflow — reproduction report", "", INTRO, ""]
    out += [line + "\n" for line in _headline(rep)]
    out += [_md_table(SUMMARY, _summary_rows(results)), ""]
    out += ["## Claim checks at a glance", ""]
    out += [_md_table(["claim check", "value", "threshold", "result", "fails if"],
                      _claim_index(results)), ""]  # fmt: skip
    for m in results:
        out += [f"## {m['title']} (`{m['name']}`) — {_status(m)}", ""]
        out += [f"**Claim.** {m['claim']}", ""]
        if m["status"] != "ok":
            out += ["**The experiment failed with an error:**", "", "```", m["error"] or "", "```",
                    ""]  # fmt: skip
        for fig in m["figures"]:
            out += [f"![{fig}]({m['name']}/{fig})", ""]
        for kind, label in (("claim", "Claim checks"), ("sanity", "Sanity checks")):
            rows = _check_rows(m, kind)
            if rows:
                out += [f"**{label}**", "", _md_table(HEADER, rows), ""]
        for note in m.get("notes", []):
            out += [f"> {note}", ""]
        out += [f"<sub>{_provenance_line(m)}. Config: `{json.dumps(m['config'])}`</sub>", ""]
    return "\n".join(out)


CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f4f4f4}.pass{color:#16794a;font-weight:600}
.FAIL,.ERROR{color:#b00020;font-weight:600}img{max-width:100%;border:1px solid #eee}
blockquote{border-left:4px solid #ccc;margin:1em 0;padding:.2em 1em;color:#444}
.prov{font-size:.8em;color:#666}pre{background:#f8f8f8;padding:1em;overflow:auto}
"""


def _html_table(header: list[str], rows: list[list[str]], status_col: int) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for r in rows:
        cells = []
        for i, c in enumerate(r):
            cls = f' class="{html.escape(c)}"' if i == status_col else ""
            cells.append(f"<td{cls}>{html.escape(c)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{th}</tr>{''.join(body)}</table>"


def _md_inline(text: str) -> str:
    """The bold markers of the headline lines as HTML."""
    parts = html.escape(text).split("**")
    return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))


def render_html(rep: Report, out: Path) -> str:
    results = rep.results
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>muonflow reproduction report</title><style>{CSS}</style></head><body>",
        "<h1>muonflow — reproduction report</h1>",
        f"<p>{_md_inline(INTRO.replace('*Move', 'Move').replace('optimizer*', 'optimizer'))}</p>",
    ]
    parts += [f"<p>{_md_inline(line)}</p>" for line in _headline(rep)]
    parts.append(_html_table(SUMMARY, _summary_rows(results), 5))
    parts.append("<h2>Claim checks at a glance</h2>")
    parts.append(_html_table(["claim check", "value", "threshold", "result", "fails if"],
                             _claim_index(results), 3))  # fmt: skip
    for m in results:
        st = _status(m)
        parts.append(
            f"<h2>{html.escape(m['title'])} (<code>{m['name']}</code>) — "
            f"<span class='{st}'>{st}</span></h2>"
        )
        parts.append(f"<p><strong>Claim.</strong> {html.escape(m['claim'])}</p>")
        if m["status"] != "ok":
            parts.append(f"<pre>{html.escape(m['error'] or '')}</pre>")
        for fig in m["figures"]:
            path = figure_path(Path(out) / m["name"], fig)  # checked by collect() already
            if not path.exists():
                parts.append(f"<p>(figure {html.escape(fig)} is missing)</p>")
                continue
            b64 = base64.b64encode(path.read_bytes()).decode()
            parts.append(f"<p><img alt='{html.escape(fig)}' src='data:image/png;base64,{b64}'></p>")
        for kind, label in (("claim", "Claim checks"), ("sanity", "Sanity checks")):
            rows = _check_rows(m, kind)
            if rows:
                parts.append(f"<h3>{label}</h3>")
                parts.append(_html_table(HEADER, rows, 3))
        for note in m.get("notes", []):
            parts.append(f"<blockquote>{html.escape(note)}</blockquote>")
        parts.append(
            f"<p class='prov'>{html.escape(_provenance_line(m))}. Config: "
            f"<code>{html.escape(json.dumps(m['config']))}</code></p>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def build_report(out: Path, *, rebuild: bool = True) -> Report:
    """Write ``out/report.md`` and ``out/report.html`` from the saved results in ``out``.

    ``rebuild``: re-evaluate checks, notes and figures from the saved series first (never
    simulates). Raises ``FileNotFoundError`` if ``out`` holds no result at all, and
    ``ValueError`` before writing anything if ``out`` (or, with ``rebuild``, a result folder)
    is not writable. The two reports are renamed into place together, after both are written.
    """
    from .experiments import REGISTRY

    out = Path(out)
    if not out.is_dir():
        raise FileNotFoundError(f"{out} is not a results folder; run `muonflow reproduce` first")
    check_writable(out, "the results folder")
    if rebuild:  # metrics.json and figures are rewritten in each result folder
        for name in REGISTRY:
            if (out / name / METRICS).exists():
                check_writable(out / name, "the result folder")
    rep = collect(out, rebuild=rebuild)
    if not rep.results and not rep.problems:
        raise FileNotFoundError(f"no {METRICS} found under {out}; run `muonflow reproduce` first")
    files = {"report.md": render_markdown(rep), "report.html": render_html(rep, out)}
    try:
        atomic_write_many(out, {k: v.encode("utf-8") for k, v in files.items()})
    except OSError as exc:
        raise ValueError(f"cannot write the report into {out}: {exc.strerror or exc}") from None
    return rep
