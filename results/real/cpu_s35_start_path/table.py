"""The before/after table of startbench_ab.txt (session 35): `python results/real/cpu_s35_start_path/table.py FILE`.

FILE holds `python -m real.startbench` runs of two trees, each line prefixed with the tree (`wt_old`: before,
`main`: after) and the run's number; the table gives the median over runs of each column, before -> after."""

import sys

import pandas as pd

from sim.results import markdown


def read(path: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The prefill starts' rows and the decode starts' rows, each with its tree and run."""
    rows, section = [], {}
    with open(path) as lines:
        for line in lines:
            tree, run, rest = line.split(" ", 2)
            if rest.startswith(("Engine.start", "decode starts")):
                section[tree, run] = "prefill" if rest.startswith("Engine.start") else "decode"
                continue
            if not rest.startswith("| ") or "---" in rest or "prompts" in rest or "sequences" in rest:
                continue
            rows.append((section[tree, run], tree, int(run), *[c.strip() for c in rest.strip().strip("|").split("|")]))
    prefill = pd.DataFrame([r for r in rows if r[0] == "prefill"],
                           columns=["s", "tree", "run", "n", "tokens", "ids_l", "ids_a", "host", "layout", "vlayout",
                                    "start", "vstart"])
    decode = pd.DataFrame([r for r in rows if r[0] == "decode"], columns=["s", "tree", "run", "n", "built", "carried",
                                                                          "ratio"])
    return prefill, decode


def change(medians: pd.DataFrame, n: str, column: str) -> str:
    before, after = medians.loc[n, (column, "wt_old")], medians.loc[n, (column, "main")]
    return f"{before:.0f} -> {after:.0f} ({after / before:.2f}x)"


def main(path: str) -> None:
    prefill, decode = read(path)
    columns = ["layout", "vlayout", "vstart"]
    prefill[columns] = prefill[columns].astype(float)
    decode["built"] = decode["built"].astype(float)
    medians = prefill.groupby(["n", "tree"])[columns].median().unstack("tree")
    medians = medians.join(decode.groupby(["n", "tree"])[["built"]].median().unstack("tree"))
    table = pd.DataFrame([{"prompts or sequences": int(n), "layout us": change(medians, n, "layout"),
                           "varlen layout us": change(medians, n, "vlayout"),
                           "varlen start us": change(medians, n, "vstart"),
                           "decode start, built on the host us": change(medians, n, "built")}
                          for n in sorted(medians.index, key=int)])
    print(markdown(table))


if __name__ == "__main__":
    main(sys.argv[1])
