"""Build ``report.md`` and a self-contained ``report.html`` from saved results only.

Nothing here reruns an experiment: the report reads ``OUT/<experiment>/metrics.json`` and the
PNG figures beside it, so ``muonflow report OUT`` rebuilds it at any time.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from .experiments.runner import METRICS, atomic_write_text, load_metrics, passed


def collect(out: Path) -> list[dict[str, Any]]:
    """All readable metrics under ``out``, in the registry order where known."""
    from .experiments import REGISTRY

    found = {}
    for path in sorted(Path(out).glob(f"*/{METRICS}")):
        m = load_metrics(path)
        if m is not None:
            found[m["name"]] = m
    order = [n for n in REGISTRY if n in found] + sorted(set(found) - set(REGISTRY))
    return [found[n] for n in order]


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
        n_ok = sum(c["passed"] for c in m["checks"].values())
        n_all = len(m["checks"])
        rows.append([m["name"], f"{n_ok}/{n_all}", f"{m['wall_time_s']:.1f}", _status(m)])
    return rows


def _check_rows(m: dict[str, Any]) -> list[list[str]]:
    return [
        [
            name,
            _fmt(c["value"]),
            f"{c['relation']} {_fmt(c['threshold'])}",
            "pass" if c["passed"] else "FAIL",
            c["why"],
        ]
        for name, c in m["checks"].items()
    ]


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

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
        + f"; profile {m['profile']}, seed {m['seed']}, wall time {m['wall_time_s']:.1f} s"
    )


HEADER = ["check", "value", "threshold", "result", "why this threshold"]


def render_markdown(results: list[dict[str, Any]]) -> str:
    n_pass = sum(passed(m) for m in results)
    out = [
        "# muonflow — reproduction report",
        "",
        "*Move on Muon: a Hamiltonian probability gradient flow perspective of the Muon "
        "optimizer* — one experiment per claim, each with checks against theory.",
        "",
        f"**{n_pass}/{len(results)} experiments pass all their checks.**",
        "",
        _md_table(["experiment", "checks passed", "time [s]", "status"], _summary_rows(results)),
        "",
    ]
    for m in results:
        out += [f"## {m['title']} (`{m['name']}`) — {_status(m)}", ""]
        out += [f"**Claim.** {m['claim']}", ""]
        if m["status"] != "ok":
            out += ["**The experiment failed with an error:**", "", "```", m["error"], "```", ""]
        for fig in m["figures"]:
            out += [f"![{fig}]({m['name']}/{fig})", ""]
        if m["checks"]:
            out += [_md_table(HEADER, _check_rows(m)), ""]
        for note in m.get("notes", []):
            out += [f"> {note}", ""]
        out += [
            f"<sub>{_provenance_line(m)}. Config: `{json.dumps(m['config'])}`</sub>",
            "",
        ]
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


def render_html(results: list[dict[str, Any]], out: Path) -> str:
    n_pass = sum(passed(m) for m in results)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>muonflow reproduction report</title><style>{CSS}</style></head><body>",
        "<h1>muonflow — reproduction report</h1>",
        "<p><em>Move on Muon: a Hamiltonian probability gradient flow perspective of the Muon "
        "optimizer</em> — one experiment per claim, each with checks against theory.</p>",
        f"<p><strong>{n_pass}/{len(results)} experiments pass all their checks.</strong></p>",
        _html_table(
            ["experiment", "checks passed", "time [s]", "status"], _summary_rows(results), 3
        ),
    ]
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
            data = (Path(out) / m["name"] / fig).read_bytes()
            b64 = base64.b64encode(data).decode()
            parts.append(f"<p><img alt='{html.escape(fig)}' src='data:image/png;base64,{b64}'></p>")
        if m["checks"]:
            parts.append(_html_table(HEADER, _check_rows(m), 3))
        for note in m.get("notes", []):
            parts.append(f"<blockquote>{html.escape(note)}</blockquote>")
        parts.append(
            f"<p class='prov'>{html.escape(_provenance_line(m))}. Config: "
            f"<code>{html.escape(json.dumps(m['config']))}</code></p>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def build_report(out: Path) -> list[dict[str, Any]]:
    """Write ``out/report.md`` and ``out/report.html`` from the saved results in ``out``."""
    out = Path(out)
    results = collect(out)
    if not results:
        raise FileNotFoundError(f"no {METRICS} found under {out}; run `muonflow reproduce` first")
    atomic_write_text(out / "report.md", render_markdown(results))
    atomic_write_text(out / "report.html", render_html(results, out))
    return results
