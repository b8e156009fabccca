"""parvis: computer-vision workloads at the speed of the hardware.

    import parvis
    m = parvis.load("torchvision:mobilenet_v2", weights="mobilenet_v2-b0353104.pth")
    print(m.predict("photo.png"))

The API (`parvis.load`, `parvis.train`, `parvis.evaluate`, `parvis.Model`) lives in `parvis.api` and is
imported on first use, so `import parvis` (and the CLI's start) stays light.
"""

__version__ = "0.1.0"
_API = ("Model", "evaluate", "load", "train")


def __getattr__(name: str):
    if name in _API:
        from parvis import api  # noqa: PLC0415 - the lazy facade: `import parvis` stays light

        return getattr(api, name)
    raise AttributeError(f"module 'parvis' has no attribute {name!r}")


def __dir__() -> list[str]:
    return [*globals(), *_API]
