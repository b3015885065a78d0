"""The training data cellbench knows: each resource's files, checksums and canonical source.

bench.data finds (or downloads) them and verifies every file against these checksums.
"""

from __future__ import annotations

from dataclasses import dataclass, field

D2L_DATA_URL = "http://d2l-data.s3-accelerate.amazonaws.com/"
NAMES_ZIP_URL = "https://download.pytorch.org/tutorial/data.zip"
# chinese-poetry pinned to the commit whose 全唐诗/poet.tang.*.json convert to poems_tang.txt
POEMS_COMMIT = "fa1814a8044db4fb0c7a9e0a0449974e8c3463b7"
POEMS_BASE_URL = (
    "https://raw.githubusercontent.com/chinese-poetry/chinese-poetry/"
    f"{POEMS_COMMIT}/%E5%85%A8%E5%94%90%E8%AF%97/"
)  # .../全唐诗/
POEMS_JSON_FILES = tuple(f"poet.tang.{i}.json" for i in range(0, 58000, 1000))

# Per-file SHA-256 of the tutorial's data/names/*.txt (computed from the reference copy; the
# zip's own hash is not published, so the extracted files are what we verify).
NAMES_SHA256: dict[str, str] = {
    "Arabic.txt": "6f424a8dbe51cbbbabab7a57d38b617210125e4e3991f3c657cb79b8f104bafc",
    "Chinese.txt": "49263ef55a8cb1740e841d65cad8214b2f9b5b869bc534c811746422496fa91e",
    "Czech.txt": "145bbbd6d0816578f03388e92c264d39ef1c60df920b081d371fa5c5cc055a8e",
    "Dutch.txt": "924f32b635170eae561f84538632138fc07d4c8bbd70ba3fb980de1ecc4d2af3",
    "English.txt": "9cca037066d3d5989e24bc01801416162de506b5e28e15b7c092a47905d29bf2",
    "French.txt": "81e65b36c60ed5b89a17422f6edcadbb89546f38ad69e960e64e7ba682012a95",
    "German.txt": "7449cd590b97a733e18d613a4155decd77ec35dc5f8aadd7a82204dce4f051db",
    "Greek.txt": "3555b5186de7f401e6d991b088e9e644ca3099116477818c25ab5793801389e6",
    "Irish.txt": "cf8c7013256252a88d2503127b87282a11f21b2ff6db1bded68834c19a1ec058",
    "Italian.txt": "f88414c27d0606a11a678b4859277828c2565d6cc4d9ee932deef6e94f3b35e4",
    "Japanese.txt": "e0e717e114fec3e7eade4d9dabe0067c475f43147e36a22b47902ee76ad9e67f",
    "Korean.txt": "cd54221ccb362a6cba4c78828838cf3268a0e59744767a37cf6ec4b74036b136",
    "Polish.txt": "45bab898af2f60ed3a728bbf6980e28821011a7caa53227553b5785903a40826",
    "Portuguese.txt": "50a8735f41f4f73757c8ce5b16cb0275cd86b2b214bcbc8c9805f508cb131c53",
    "Russian.txt": "43b3e64ce351f77f1ac9e0cdf7566012d127f4371875fd25208845b5c9d6f7c3",
    "Scottish.txt": "78d0252711d87d948ea86fe34826c51d2d794a8e52d15b5d6f7b6244d45d62dd",
    "Spanish.txt": "1bcb462ed3316756a85781d68232bddae04498fdddd5d9219c53fd1fbdeba7a7",
    "Vietnamese.txt": "f3f9e4164ab47601178a6e45b216464a64122f49d05541f24bf18a757253281d",
}


class DataError(RuntimeError):
    """Data missing, corrupted or not downloadable; the message says how to fix it."""


class DataNotFound(DataError):
    """No copy anywhere in the lookup and no download allowed (not: a corrupted copy)."""


@dataclass
class FileSpec:
    """One checksummed file: `name` relative to a data directory. For a `.xz` file the digest
    is of the decompressed content, which does not depend on the compressor's version."""

    name: str
    algorithm: str
    digest: str


@dataclass(frozen=True)
class Resource:
    name: str  # the name in a data directory (file, or directory for names)
    what: str  # human description
    files: tuple[FileSpec, ...]
    source: str | None = None  # where it comes from, for messages
    downloadable: bool = True
    notes: str = ""
    embedded: bool = False  # a verified copy ships in EMBEDDED_DIR
    extra: dict = field(default_factory=dict, hash=False, compare=False)


TIME_MACHINE = Resource(
    "timemachine.txt",
    "H. G. Wells, The Time Machine (d2l's copy)",
    (FileSpec("timemachine.txt", "sha1", "090b5e7e70c295757f55df93cb0a180b9691891a"),),
    source="d2l's DATA_URL + 'timemachine.txt'",
    embedded=True,
)
NAMES = Resource(
    "names",
    "the PyTorch names tutorial's data/names/*.txt (18 files)",
    tuple(FileSpec(f"names/{n}", "sha256", d) for n, d in sorted(NAMES_SHA256.items())),
    source=NAMES_ZIP_URL + " (data/names/*.txt inside)",
    embedded=True,
)
# The SHA-256 of the converted corpus: the JSON files' own hashes are not published, so the
# download is verified after conversion (bench.tasks.poems_corpus).
POEMS = Resource(
    "poems_tang.txt",
    "57,435 Tang poems as 'title:content' lines",
    (
        FileSpec(
            "poems_tang.txt",
            "sha256",
            "c7f002e6ed71f3f0a6d5c471ab4813b4e581b90adb48ae81ea53062435e548b2",
        ),
    ),
    source=f"chinese-poetry/chinese-poetry at {POEMS_COMMIT[:8]}, 全唐诗/poet.tang.*.json "
    "(58 files, converted to one 'title:content' line per poem)",
    notes="a 3,000-poem sample ships with cellbench (python -m bench train poems --corpus sample)",
)
# 3,000 lines drawn with random.Random(0).sample from poems_tang.txt, in file order, xz-compressed.
POEMS_SAMPLE = Resource(
    "poems_tang_sample.txt.xz",
    "a 3,000-poem sample of poems_tang.txt (shipped with cellbench)",
    (
        FileSpec(
            "poems_tang_sample.txt.xz",
            "sha256",
            "e3447fba61c6dc371948729e7199b041565944c988aa5faf026a087a194fbd68",
        ),
    ),
    downloadable=False,
    embedded=True,
)
RESOURCES = {r.name: r for r in (TIME_MACHINE, NAMES, POEMS, POEMS_SAMPLE)}
ALIASES = {
    "timemachine": TIME_MACHINE,
    "time_machine": TIME_MACHINE,
    "names": NAMES,
    "poems": POEMS,
    "poems_tang": POEMS,
    "poems_sample": POEMS_SAMPLE,
}


def resource(name: str) -> Resource:
    r = RESOURCES.get(name) or ALIASES.get(name)
    if r is None:
        raise DataError(f"unknown data resource {name!r}; expected one of {', '.join(RESOURCES)}")
    return r
