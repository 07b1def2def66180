"""Class names and prompt templates for zero-shot classification, by name or as lists in config.

Templates use CLIP_benchmark's named placeholder ``{c}`` ("a photo of a {c}."), filled with
``template.format(c=name)``. Named sets:

    templates   openai_imagenet   the 80 OpenAI ImageNet prompts (open_clip's OPENAI_IMAGENET_TEMPLATES)
                simple_imagenet   open_clip's 7 SIMPLE_IMAGENET_TEMPLATES
                cifar             the 18 CIFAR-10/100 prompts of CLIP and CLIP_benchmark
    classnames  imagenet1k        open_clip's 1000 IMAGENET_CLASSNAMES (index order = sorted wnid folders)
"""

from __future__ import annotations

CIFAR_TEMPLATES = [
    "a photo of a {c}.", "a blurry photo of a {c}.", "a black and white photo of a {c}.",
    "a low contrast photo of a {c}.", "a high contrast photo of a {c}.", "a bad photo of a {c}.",
    "a good photo of a {c}.", "a photo of a small {c}.", "a photo of a big {c}.",
    "a photo of the {c}.", "a blurry photo of the {c}.", "a black and white photo of the {c}.",
    "a low contrast photo of the {c}.", "a high contrast photo of the {c}.", "a bad photo of the {c}.",
    "a good photo of the {c}.", "a photo of the small {c}.", "a photo of the big {c}.",
]


def _open_clip_templates(name: str) -> list[str]:
    from open_clip import zero_shot_metadata as z

    # open_clip's templates are lambdas; calling one with "{c}" gives the format string.
    return [t("{c}") for t in getattr(z, name)]


NAMED_TEMPLATES = {
    "openai_imagenet": lambda: _open_clip_templates("OPENAI_IMAGENET_TEMPLATES"),
    "simple_imagenet": lambda: _open_clip_templates("SIMPLE_IMAGENET_TEMPLATES"),
    "cifar": lambda: list(CIFAR_TEMPLATES),
}


def _imagenet_classnames() -> list[str]:
    from open_clip import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


NAMED_CLASSNAMES = {"imagenet1k": _imagenet_classnames}


def templates(spec: str | list[str], where: str = "templates") -> list[str]:
    """A named template set or a list of strings with ``{c}``; ``where`` names the config key in errors."""
    if isinstance(spec, str):
        if spec not in NAMED_TEMPLATES:
            raise ValueError(f"{where}: unknown template set {spec!r}; use one of {sorted(NAMED_TEMPLATES)} or a list")
        return NAMED_TEMPLATES[spec]()
    bad = [t for t in spec if "{c}" not in t]
    if bad or not spec:
        raise ValueError(f"{where}: every template needs the placeholder {{c}} (e.g. 'a photo of a {{c}}.'); bad: {bad or 'empty list'}")
    return list(spec)


def classnames(spec: str | list[str] | None, where: str = "classnames") -> list[str] | None:
    """A named class-name list, a list, or None (the dataset's own folder names or labels)."""
    if spec is None or isinstance(spec, list):
        return spec
    if spec not in NAMED_CLASSNAMES:
        raise ValueError(f"{where}: unknown class-name list {spec!r}; use one of {sorted(NAMED_CLASSNAMES)} or a list")
    return NAMED_CLASSNAMES[spec]()


def prompts(class_names: list[str], template_list: list[str]) -> list[str]:
    """Class-major: the prompts of class 0 (one per template), then class 1, ..."""
    return [t.format(c=name) for name in class_names for t in template_list]
