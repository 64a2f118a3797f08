"""CAM method names as users write them: 'gradcam', 'hirescam@stride16', 'gradcam@layer3'."""
from __future__ import annotations


def split_method(name: str) -> tuple[str, str | None]:
    """'gradcam@layer3' -> ('gradcam', 'layer3'); 'gradcam' -> ('gradcam', None)."""
    base, _, layer = name.partition("@")
    return base, layer or None


def parse_cam_methods(text: str | None) -> tuple[str, ...]:
    """'cam,gradcam' -> ('cam', 'gradcam'); 'none' or '' -> (); unknown names fail early, listing choices.

    A method may name another layer than the registry's: 'gradcam@layer3' (dotted path in the net).
    """
    from benchmark.cams.methods import get_cam_method

    if not text or text.strip().lower() == "none":
        return ()
    parsed = []
    for name in (m.strip() for m in text.split(",") if m.strip()):
        base, at, layer = name.partition("@")
        get_cam_method(base.lower())
        parsed.append(base.lower() + at + layer)  # method names are lowercase; layer paths keep their case
    return tuple(parsed)
