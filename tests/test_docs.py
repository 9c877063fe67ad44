"""Checks of the documentation: the guides' code runs, and versions and API pages agree.

Every ```python block of a page under docs/ runs, in page order, in one namespace and in
a fresh working folder. A block whose fence carries ``title="not run"`` is skipped, and
so are ```bash and ```text blocks.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import re
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

import mnist_fusion

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
GUIDES = (
    "quickstart.md",
    "datasets.md",
    "models.md",
    "side-inputs.md",
    "training.md",
    "reference-experiment.md",
)

# Modules documented on docs/api.md. The command line is documented in the quickstart.
API_MODULES = (
    "data",
    "models",
    "losses",
    "metrics",
    "training",
    "schedule",
    "checkpoint",
    "testing",
    "lightning",
    "plots",
    "distributed",
)
NOT_IN_API = {"cli"}

_FENCE = re.compile(r"^(?P<fence>`{3,})(?P<info>.*)$")
_SKIP_TITLE = 'title="not run"'


@dataclass(frozen=True)
class CodeBlock:
    """One fenced code block: its info string, its first code line (1-based) and its text."""

    info: str
    line: int
    code: str

    @property
    def runnable(self) -> bool:
        words = self.info.split()
        return bool(words) and words[0] == "python" and _SKIP_TITLE not in self.info


def parse_code_blocks(text: str) -> list[CodeBlock]:
    """Return the fenced code blocks of a Markdown text in order.

    Raises:
        ValueError: If a fence is never closed, because the rest of the page would be lost.
    """
    blocks = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue

        fence, start = opening["fence"], index + 1
        end = start
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        if end == len(lines):
            raise ValueError(f"The code fence opened on line {index + 1} is never closed.")

        blocks.append(CodeBlock(opening["info"].strip(), start + 1, "\n".join(lines[start:end])))
        index = end + 1
    return blocks


def _runnable_blocks(page: Path) -> list[CodeBlock]:
    return [block for block in parse_code_blocks(page.read_text()) if block.runnable]


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every socket connection to a host other than loopback raise."""
    original_connect = socket.socket.connect

    def connect_loopback_only(self: socket.socket, address: object) -> None:
        host = address[0] if isinstance(address, tuple) else address
        if host not in ("127.0.0.1", "::1", "localhost") and self.family != socket.AF_UNIX:
            raise OSError(f"The documentation examples must not use the network, got {address}.")
        return original_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect_loopback_only)


def test_parse_code_blocks() -> None:
    text = (
        '# Page\n\n```python\nx = 1\n```\n\n```python title="not run"\ny\n```\n```bash\nls\n```\n'
    )
    blocks = parse_code_blocks(text)
    assert [block.info for block in blocks] == ["python", 'python title="not run"', "bash"]
    assert [block.runnable for block in blocks] == [True, False, False]
    assert blocks[0].line == 4
    assert blocks[0].code == "x = 1"


def test_parse_code_blocks_unclosed_fence() -> None:
    with pytest.raises(ValueError, match="line 1"):
        parse_code_blocks("```python\nx = 1\n")


@pytest.mark.parametrize("name", GUIDES)
def test_guide_has_runnable_code(name: str) -> None:
    assert _runnable_blocks(DOCS / name), f"docs/{name} has no runnable python block"


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
@pytest.mark.usefixtures("no_network")
def test_page_code_runs(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem.replace('-', '_')}"}
    for block in _runnable_blocks(page):
        # Padding with blank lines makes traceback line numbers match the Markdown file.
        source = "\n" * (block.line - 1) + block.code
        exec(compile(source, str(page), "exec"), namespace)  # noqa: S102


def test_pyproject_version_matches_package() -> None:
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["version"] == mnist_fusion.__version__


def test_changelog_latest_release_is_package_version() -> None:
    headings = re.findall(r"^## \[([^\]]+)\]", (ROOT / "CHANGELOG.md").read_text(), re.MULTILINE)
    assert headings[0] == "Unreleased"
    assert headings[1] == mnist_fusion.__version__


def test_nav_lists_every_page() -> None:
    config = (ROOT / "mkdocs.yml").read_text()
    for page in PAGES:
        assert re.search(rf":\s*{re.escape(page.name)}\s*$", config, re.MULTILINE), page.name


def test_api_page_covers_public_modules() -> None:
    directives = set(re.findall(r"^::: (\S+)\s*$", (DOCS / "api.md").read_text(), re.MULTILINE))
    public = {
        info.name
        for info in pkgutil.iter_modules(mnist_fusion.__path__)
        if not info.name.startswith("_")
    }
    assert public - NOT_IN_API <= set(API_MODULES), "a public module is missing from API_MODULES"
    for name in API_MODULES:
        assert f"mnist_fusion.{name}" in directives, f"docs/api.md lacks ::: mnist_fusion.{name}"


@pytest.mark.parametrize("name", API_MODULES)
def test_public_names_exist(name: str) -> None:
    module = importlib.import_module(f"mnist_fusion.{name}")
    missing = [attribute for attribute in module.__all__ if not hasattr(module, attribute)]
    assert not missing, f"mnist_fusion.{name}.__all__ names missing attributes: {missing}"


@dataclass(frozen=True)
class BuiltSite:
    """A site built from mkdocs.yml, with the warnings that ``mkdocs build --strict`` rejects."""

    folder: Path
    warnings: list[str]


class _WarningCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def built_site(tmp_path_factory: pytest.TempPathFactory) -> BuiltSite:
    """Build the site once without strict mode, so every warning is collected."""
    build = pytest.importorskip("mkdocs.commands.build")
    config_module = pytest.importorskip("mkdocs.config")
    folder = tmp_path_factory.mktemp("site")
    config = config_module.load_config(str(ROOT / "mkdocs.yml"), site_dir=str(folder))

    collector = _WarningCollector()
    mkdocs_logger = logging.getLogger("mkdocs")
    mkdocs_logger.addHandler(collector)
    try:
        build.build(config)
    finally:
        mkdocs_logger.removeHandler(collector)
    return BuiltSite(folder, collector.messages)


def test_site_builds_without_warnings(built_site: BuiltSite) -> None:
    assert built_site.warnings == []


@pytest.mark.parametrize("name", API_MODULES)
def test_api_page_renders_public_names(built_site: BuiltSite, name: str) -> None:
    html = (built_site.folder / "api" / "index.html").read_text()
    rendered = set(re.findall(r'id="(mnist_fusion\.[\w.]+)"', html))
    module = importlib.import_module(f"mnist_fusion.{name}")
    missing = [item for item in module.__all__ if f"mnist_fusion.{name}.{item}" not in rendered]
    assert not missing, f"docs/api.md renders no entry for mnist_fusion.{name}: {missing}"
