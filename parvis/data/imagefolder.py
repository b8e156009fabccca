"""Classification in the ImageFolder layout: ROOT/<class>/<image>, class index = rank of the folder name."""

from __future__ import annotations

from pathlib import Path

from torchvision import tv_tensors

from parvis.data.datasets import FileDataset, LayoutError, Transform, list_images


class ImageFolderDataset(FileDataset):
    """Samples are (Image, class index); ``classes`` are the sorted class folder names."""

    def __init__(
        self,
        root: str | Path,
        transform: Transform | None = None,
        on_bad_sample: str = "error",
        decoder: str = "auto",
        min_size: int | None = None,
    ):
        super().__init__(transform=transform, on_bad_sample=on_bad_sample, decoder=decoder, min_size=min_size)
        self.root = Path(root)
        if not self.root.is_dir():
            raise LayoutError(self.root, "no such folder; expected ROOT/<class>/<image> (ImageFolder layout)")
        # Empty class folders still take an index so that every split numbers the classes alike.
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        self.samples = [
            (path, index) for index, name in enumerate(self.classes) for path in list_images(self.root / name)
        ]
        if not self.samples:
            raise LayoutError(
                self.root, "no images in class folders; expected ROOT/<class>/<image> (ImageFolder layout)"
            )
        self.targets = [index for _, index in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[tv_tensors.Image, int]:
        path, target = self.samples[index]
        image, _ = self.read_image(path)
        return image, target
