"""Package metadata: ``pip install .`` or ``-e .`` (runtime), ``.[test]`` (pytest), ``.[flash]`` (flash-attn on CUDA).

Installs the packages ``wan``, ``pipeline``, ``app``, ``media``, ``utils`` and ``methods`` and the ``deep-forcing``
command (``app.cli:main``). ``inference.py`` stays a checkout-only shim. The shipped ``configs/`` and ``prompts/``
go into the wheel as ``utils/_resources/{configs,prompts}`` (see ``build_py`` below and ``utils/paths.py``).
"""
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
TEST_ONLY = {"pytest", "setuptools", "wheel"}  # the packaging test builds a wheel offline
BENCH_ONLY = {"matplotlib"}
# What the code reads at run time, relative to the repository root (utils/paths.py finds it in both layouts).
RESOURCE_GLOBS = ("configs/**/*.yaml", "configs/**/*.json", "prompts/*.txt", "prompts/examples_txt/*.txt")
RESOURCE_DIR = "utils/_resources"  # where the wheel holds them
# requirements.txt pins these exactly for CI; the package accepts the range we have run the tests with.
RANGES = {
    # 0.35.0 is the first release whose WanDecoder3d.forward takes first_chunk, which the streaming VAE decode
    # (wan/vae.py) drives; 0.33/0.34 have AutoencoderKLWan without it. wan/vae.py checks the interface at load time.
    "diffusers": "diffusers>=0.35,<1",
    # UMT5EncoderModel, UMT5Config, AutoTokenizer only; 4.x requires huggingface_hub<1, which we exclude below.
    "transformers": "transformers>=5.0,<6",
}


def requirement_name(line: str) -> str:
    """'imageio-ffmpeg>=0.5' -> 'imageio-ffmpeg'."""
    for sep in "<>=!~;[ ":
        line = line.split(sep)[0]
    return line.strip().lower()


def requirement_lines() -> list[str]:
    """requirements.txt without comments and blank lines."""
    lines = (ln.split("#")[0].strip() for ln in (ROOT / "requirements.txt").read_text().splitlines())
    return [ln for ln in lines if ln]


def install_requires() -> list[str]:
    """requirements.txt less the test/bench-only packages, exact pins replaced by RANGES."""
    out = [RANGES.get(requirement_name(ln), ln) for ln in requirement_lines()
           if requirement_name(ln) not in TEST_ONLY | BENCH_ONLY]
    pinned = [ln for ln in out if "==" in ln]
    if pinned:
        raise SystemExit(f"setup.py: {pinned} are exact pins in requirements.txt; give them a range in RANGES")
    return out


def pinned(names: set[str]) -> list[str]:
    """The requirements.txt lines of ``names`` (same pins as the file)."""
    return [ln for ln in requirement_lines() if requirement_name(ln) in names]


def resource_files() -> list[str]:
    """RESOURCE_GLOBS expanded: repository-relative paths of the configs and prompts a wheel ships."""
    return sorted({p.relative_to(ROOT).as_posix() for g in RESOURCE_GLOBS for p in ROOT.glob(g) if p.is_file()})


class BuildPyWithResources(build_py):
    """build_py that also copies configs/ and prompts/ into the built ``utils`` package (``utils/_resources``).

    Not for an editable install: that one reads them from the checkout.
    """

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        for rel, target in self._resource_targets():
            self.mkpath(str(Path(target).parent))
            self.copy_file(str(ROOT / rel), target)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        extra = [] if self.editable_mode else [target for _, target in self._resource_targets()]
        return super().get_outputs(include_bytecode) + extra

    def _resource_targets(self) -> list[tuple[str, str]]:
        return [(rel, str(Path(self.build_lib, RESOURCE_DIR, rel))) for rel in resource_files()]


PACKAGES = ["wan", "pipeline", "app", "media", "utils", "methods"]

setup(
    name="deep-forcing",
    version="0.1.0",
    description="Deep Forcing: training-free long video generation with Deep Sink and Participative Compression "
                "on Self Forcing (Wan2.1-T2V-1.3B)",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=[p for name in PACKAGES for p in (name, f"{name}.*")]),
    cmdclass={"build_py": BuildPyWithResources},
    install_requires=install_requires(),
    # the tests also exercise the benchmark's plots, so "test" includes the bench extra
    extras_require={"test": pinned(TEST_ONLY | BENCH_ONLY), "bench": pinned(BENCH_ONLY), "flash": ["flash-attn>=2.5"],
                    "fp8": ["torchao>=0.18"]},
    entry_points={"console_scripts": ["deep-forcing=app.cli:main"]},
)
