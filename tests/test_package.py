"""The package's shape: layers that only import downward, and a README that describes the real tree."""
import ast
import re

from conftest import REPO

PACKAGE = REPO / "jpop_helpers"
# Lowest first. A module may import modules of its own layer or below, never above.
LAYERS = [
    {"io", "layout", "colab", "cliargs", "install", "listen", "precision", "optim", "distributed", "chunking", "lora",
     "codec_fit", "quiet"},
    {"problems", "checkpoint", "captions", "labeling", "split", "fad", "clap", "model", "separate", "sampler",
     "melody"},
    {"manifest", "download"},
    {"tokens", "prepare", "plan", "conditions"},
    {"batches", "runs"},
    {"loss", "plots"},
    {"train"},
    {"finetune", "export", "generate", "report"},
    {"evaluate"},
    {"demo"},
    {"cli", "__main__", "__init__"},
]


def _imports() -> dict[str, set[str]]:
    out = {}
    for path in PACKAGE.glob("*.py"):
        deps = {n.module.split(".")[0] for n in ast.walk(ast.parse(path.read_text()))
                if isinstance(n, ast.ImportFrom) and n.level == 1 and n.module}
        out[path.stem] = deps
    return out


def test_every_module_has_a_layer_and_imports_only_downward():
    layer = {m: i for i, names in enumerate(LAYERS) for m in names}
    imports = _imports()
    assert set(imports) <= set(layer), f"modules without a layer: {set(imports) - set(layer)}"
    upward = [(m, d) for m, deps in imports.items() for d in deps if layer[d] > layer[m]]
    assert not upward, upward
    # within a layer, no cycles either
    def reaches(a, b, seen=()):
        return any(d == b or (d not in seen and layer[d] == layer[a] and reaches(d, b, (*seen, d)))
                   for d in imports.get(a, ()))
    assert not [m for m in imports if reaches(m, m)]


def test_the_readme_layout_names_every_module_and_only_real_ones():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Layout of this repository"):]
    section = section[: section.index("\n## ", 5)]
    listed = set()
    for line in section.splitlines():
        m = re.match(r"^  ([a-z_, ]+?)\s{2,}", line)  # the module column of the package block
        if m:
            listed |= {w.strip() for w in m[1].split(",") if w.strip()}
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert listed == modules, (sorted(modules - listed), sorted(listed - modules))
    for folder in ("notebooks/", "jpop_helpers/", "data_manifest/", "tests/", "bench/", "scripts/", "requirements-dev.txt"):
        assert folder in section and (REPO / folder).exists()
