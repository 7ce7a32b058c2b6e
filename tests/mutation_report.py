"""The mutation report of `make mutation`: after `mutmut run`, each mutated module's score (killed / all, and killed /
tested, where "not tested" is a mutant no selected test runs), its score on the functions that carry the protocol, and
the surviving mutants there, each with its diff (`mutmut show NAME`). Mutants that change only a docstring are
equivalent and left out. A report, not a test: nothing here fails CI."""
import ast
import json
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KILLED, SURVIVED, NO_TESTS = {1, 3, -9, 36, 37, 152, -24}, {0}, {5, 33}   # mutmut 3's exit codes (timeouts: killed)
# The functions that carry the protocol and the numbers, module by module (issue 44): the fold roles and the
# metadata checks, the rotations and the rule, the metrics, the windows and the timeline, the audio decoding.
PROTOCOL = {
    "params": ["_range_error", "as_int", "_as_list", "as_folds", "as_fraction", "as_names", "as_name", "as_bool",
               "check_fold_roles", "resolve_dataset", "StudyParams", "_as_seconds", "validate_params", "study_params"],
    "data": ["check_metadata", "check_columns", "metadata_frame", "stratified_subset", "class_names", "default_folds",
             "fold_split", "recording_subset", "skipped_clip", "report_skipped"],
    "selection": ["validation_rotations", "rotated_estimate", "choose_setting", "choose_model"],
    "metrics": ["evaluate", "result_entry", "_paired_p", "summarise", "verdict"],
    "windows": ["resample_kernel", "_phases", "resample", "read_samples", "resampled_length", "resampled_blocks",
                "repeat_to", "stream_windows", "_checked_peak", "_streamed", "file_windows", "in_batches", "_top",
                "classify_files", "window_spans", "_runs", "segments", "timeline"],
    "audio": ["check_length", "decode_audio", "audio_file", "audio_bytes", "decode_row", "first_decodable",
              "window_starts", "encode_audio"],
}


def globs() -> list[str]:
    "mutmut's names of the protocol's mutants, as `mutmut run` takes them (a function's, or a class's methods)."
    return [f"urbansound_nb.{m}.x{'ǁ' + f + 'ǁ' if f[0].isupper() else '_' + f + '__mutmut_'}*"
            for m, fs in PROTOCOL.items() for f in fs]


def statuses() -> dict:
    "{module: {mutant name: status}} from the `.meta` files mutmut leaves under mutants/."
    out = defaultdict(dict)
    for meta in (ROOT/"mutants"/"urbansound_nb").glob("*.py.meta"):
        module = meta.name.removesuffix(".py.meta")
        equivalent = docstring_only(module)
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if name in equivalent: continue
            status = ("killed" if code in KILLED else "survived" if code in SURVIVED else
                      "not tested" if code in NO_TESTS else "not run" if code is None else f"exit {code}")
            out[module][name] = status
    return out


def docstring_only(module: str) -> set[str]:
    "The mutants of `module` that change nothing but a docstring (equivalent mutants: no test can or should see them)."
    tree = ast.parse((ROOT/"mutants"/"urbansound_nb"/f"{module}.py").read_text())
    bodies = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and "__mutmut_" in node.name:
            body = node.body[1:] if (node.body and isinstance(node.body[0], ast.Expr)
                                     and isinstance(node.body[0].value, ast.Constant)
                                     and isinstance(node.body[0].value.value, str)) else node.body
            bodies[node.name] = ast.dump(ast.Module(body=body, type_ignores=[])) + ast.dump(node.args)
    same = set()
    for name, body in bodies.items():
        orig = re.sub(r"__mutmut_\d+$", "__mutmut_orig", name)
        if name != orig and bodies.get(orig) == body: same.add(f"urbansound_nb.{module}.{name}")
    return same


def function_of(mutant: str) -> str:
    "`urbansound_nb.data.x_fold_split__mutmut_3` -> `fold_split` (a method: `Class.method`)."
    name = mutant.split(".", 2)[-1].rsplit("__mutmut_", 1)[0]
    return name.replace("xǁ", "").replace("ǁ", ".").removeprefix("x_")


def score(found: dict) -> str:
    c = Counter(found.values())
    tested = c["killed"] + c["survived"]
    return (f"{c['killed'] / max(1, len(found)):6.1%} of {len(found):4} killed ({c['killed'] / max(1, tested):6.1%} "
            f"of {tested} tested; {c['not tested']} not tested)")


def main(show_diffs: bool = True) -> int:
    found = statuses()
    if not found: return print("no mutmut results: run `mutmut run` first (make mutation does)") or 1
    print("module       all mutants                                       the protocol's functions")
    survivors = []
    for module in sorted(found):
        own = {m: s for m, s in found[module].items() if function_of(m).split(".")[0] in PROTOCOL.get(module, [])}
        print(f"{module:<12} {score(found[module])}   {score(own)}")
        survivors += [m for m, s in own.items() if s == "survived"]
    print(f"\n{len(survivors)} surviving mutants in the protocol's functions:")
    for m in survivors:
        print(f"  {m}")
        if show_diffs:
            diff = subprocess.run([str(Path(sys.executable).parent/"mutmut"), "show", m], cwd=ROOT,
                                  capture_output=True, text=True).stdout
            print("\n".join(f"      {line}" for line in diff.splitlines() if line[:1] in "+-" and line[:3] not in
                            ("+++", "---")))
    return 0


if __name__ == "__main__":
    if "--globs" in sys.argv: print(" ".join(globs()))          # unquoted: no file matches them
    else: sys.exit(main("--no-diffs" not in sys.argv))
