"""Detection in the Pascal VOC layout: one XML file per image.

    Annotations/x.xml             <annotation>: <filename>, <size> (width, height), and per object <name>,
                                  <difficult>, <bndbox> (xmin, ymin, xmax, ymax)
    JPEGImages/x.jpg              the images
    ImageSets/Main/<split>.txt    the ids of each split (train, val, trainval, test); without it, one split "all"

VOC coordinates are 1-based pixel indices, both ends inclusive: a box xmin..xmax covers the continuous range
xmin - 1..xmax (detectron2 reads them so). Objects marked difficult are kept out of the targets, as COCO's crowd
annotations are. The class names are those of dataset.yaml when it gives them, else every <name> in the
annotation folder, sorted (so train and val agree).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from xml.parsers import expat

from parvis.data.datasets import Annotation, DetectionDataset, LayoutError, Transform, is_image_name
from parvis.errors import BadSampleError

SPLITS = ("train", "val", "trainval", "test")
COORDS = ("xmin", "ymin", "xmax", "ymax")
# Tools round corners to the pixel grid, and many write 0-based corners; one pixel of overhang is rounding.
BOX_TOLERANCE = 1.0


@dataclass
class VocObject:
    line: int
    name: str
    box: tuple[float, float, float, float]  # 0-based continuous pixels, x1 y1 x2 y2
    difficult: bool


@dataclass
class VocFile:
    """One parsed XML file; problems are (line, message) and never raised."""

    path: Path
    filename: str | None = None
    size: tuple[int, int] | None = None  # (height, width) as the file states it
    objects: list[VocObject] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)


def read_voc(path: Path) -> VocFile:
    """Parse one annotation with line numbers (ElementTree keeps none), collecting what is wrong."""
    result = VocFile(path)
    stack: list[str] = []
    text: list[str] = []
    current: dict[str, object] = {}
    size: dict[str, str] = {}
    parser = expat.ParserCreate()

    def start(tag: str, _attrs: dict) -> None:
        stack.append(tag)
        text.clear()
        if stack[-2:] == ["annotation", "object"] and len(stack) == 2:
            current.clear()
            current["line"] = parser.CurrentLineNumber

    def end(tag: str) -> None:
        value = "".join(text).strip()
        text.clear()
        where = tuple(stack)
        stack.pop()
        if where == ("annotation", "filename"):
            result.filename = value
        elif where[:2] == ("annotation", "size") and len(where) == 3:
            size[tag] = value
        elif where[:2] == ("annotation", "object") and len(where) == 3 and tag in ("name", "difficult"):
            current[tag] = value
        elif where[:3] == ("annotation", "object", "bndbox") and len(where) == 4 and tag in COORDS:
            current[tag] = value
        elif where == ("annotation", "object"):
            _add_object(result, dict(current))

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text.append
    try:
        parser.Parse(path.read_bytes(), True)
    except expat.ExpatError as exc:
        result.errors.append((exc.lineno, f"not valid XML ({expat.errors.messages[exc.code]}); fix or re-export it"))
        return result
    except OSError as exc:
        result.errors.append((0, f"cannot be read ({exc.strerror or exc}); check the file"))
        return result
    if size:
        try:
            height, width = int(float(size.get("height", ""))), int(float(size.get("width", "")))
            if height > 0 and width > 0:  # some tools write 0 x 0 when they did not know the size
                result.size = (height, width)
        except ValueError:
            result.errors.append((0, f"<size> has width {size.get('width')!r}, height {size.get('height')!r}"))
    return result


def _add_object(result: VocFile, found: dict[str, object]) -> None:
    line = int(found.get("line", 0))  # type: ignore[call-overload]
    name = str(found.get("name", ""))
    if not name:
        result.errors.append((line, "object has no <name>"))
        return
    missing = [c for c in COORDS if c not in found]
    if missing:
        result.errors.append((line, f"object '{name}' has no <bndbox> {'/'.join(missing)}"))
        return
    try:
        xmin, ymin, xmax, ymax = (float(str(found[c])) for c in COORDS)
    except ValueError:
        values = ", ".join(f"{c} {found[c]!r}" for c in COORDS)
        result.errors.append((line, f"object '{name}': <bndbox> values are not numbers ({values})"))
        return
    if xmax < xmin or ymax < ymin:
        result.errors.append((line, f"object '{name}': box ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) has max < min"))
        return
    difficult = str(found.get("difficult", "0")).strip() not in ("", "0")
    result.objects.append(VocObject(line, name, (xmin - 1, ymin - 1, xmax, ymax), difficult))


def find_images(images_dir: Path, annotations_dir: Path, ids: list[str] | None) -> list[tuple[Path, Path]]:
    """(XML, image) pairs: the ids of the split list (every XML without one); the image is the XML's stem
    with any image suffix, so a wrong <filename> (common after renaming) does not lose it."""
    if ids is None:
        ids = sorted(p.stem for p in annotations_dir.iterdir() if p.suffix.lower() == ".xml")
    by_stem: dict[str, Path] = {}
    for name in sorted(os.listdir(images_dir)):
        if is_image_name(name):
            by_stem.setdefault(Path(name).stem, images_dir / name)
    return [(annotations_dir / f"{i}.xml", by_stem.get(i, images_dir / f"{i}.jpg")) for i in ids]


def read_ids(path: Path) -> list[str]:
    """An ImageSets list: one id per line (a second column, as in the per-class lists, is ignored)."""
    try:
        return [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise LayoutError(path, f"cannot be read ({exc}); fix the split list") from None


def collect_classes(annotations_dir: Path) -> list[str]:
    names = set()
    for path in sorted(annotations_dir.glob("*.xml")):
        names |= {o.name for o in read_voc(path).objects}
    return sorted(names)


class VocDetectionDataset(DetectionDataset):
    """Samples as CocoDetectionDataset's; ``image_id`` is the index in the split."""

    def __init__(
        self,
        images_dir: str | Path,
        annotations_dir: str | Path,
        split_list: str | Path | None = None,
        classes: list[str] | None = None,
        transform: Transform | None = None,
        on_bad_sample: str = "error",
        decoder: str = "auto",
        min_size: int | None = None,
    ):
        super().__init__(transform=transform, on_bad_sample=on_bad_sample, decoder=decoder, min_size=min_size)
        self.images_dir, self.annotations_dir = Path(images_dir), Path(annotations_dir)
        for folder, what in ((self.images_dir, "images"), (self.annotations_dir, "annotations (XML)")):
            if not folder.is_dir():
                raise LayoutError(folder, f"no such {what} folder; check the path")
        ids = read_ids(Path(split_list)) if split_list is not None else None
        self.samples = find_images(self.images_dir, self.annotations_dir, ids)
        self.classes = list(classes) if classes is not None else collect_classes(self.annotations_dir)
        self.label_of = {name: i for i, name in enumerate(self.classes)}

    def __len__(self) -> int:
        return len(self.samples)

    def image_path(self, index: int) -> Path:
        return self.samples[index][1]

    def parse(self, index: int) -> VocFile:
        xml = self.samples[index][0]
        if not xml.is_file():
            return VocFile(xml, errors=[(0, "listed in the split but the annotation file does not exist")])
        return read_voc(xml)

    def label_counts(self) -> dict[int, int]:
        objects = [o for i in range(len(self)) for o in self.parse(i).objects if not o.difficult]
        return dict(Counter(self.label_of[o.name] for o in objects if o.name in self.label_of))

    def problems(self, parsed: VocFile, height: int | None, width: int | None) -> list[tuple[int, str]]:
        """Errors of the file itself, then those that need the class list or the image's size."""
        found = list(parsed.errors)
        if parsed.size is not None and height is not None and parsed.size != (height, width):
            stated = f"{parsed.size[1]}x{parsed.size[0]}"
            found.append((0, f"<size> says {stated} but the image is {width}x{height}; the boxes are in that grid"))
        for obj in parsed.objects:
            if obj.name not in self.label_of:
                found.append((obj.line, f"class '{obj.name}' is not one of the classes {self.classes}"))
            elif height is not None and width is not None:
                x1, y1, x2, y2 = obj.box
                if min(x1, y1) < -BOX_TOLERANCE or x2 > width + BOX_TOLERANCE or y2 > height + BOX_TOLERANCE:
                    found.append((obj.line, f"object '{obj.name}' extends outside the {width}x{height} image"))
        return found

    def annotation(self, index: int, height: int, width: int) -> Annotation:
        parsed = self.parse(index)
        problems = self.problems(parsed, height, width)
        if problems:
            line, message = problems[0]
            raise BadSampleError(f"{parsed.path}:{line}" if line else parsed.path, message)
        found = Annotation([], [], [])
        for obj in parsed.objects:
            label = self.label_of[obj.name]
            if obj.difficult:
                found.ignored.append((obj.box, label))
            else:
                found.boxes.append(obj.box)
                found.labels.append(label)
        return found
