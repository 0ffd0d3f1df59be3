"""The quality columns every generator table in docs/benchmarks.md shares, read from `eval gen --json`."""

HEADER = ("oracle base → PerFusion | oracle wins | RM wins | clean background | intact product | CLIP score | "
          "CLIP-feature FID | error ratio (held-out)")


def quality_cells(summary: dict) -> str:
    """Base → PerFusion from the same seeds: taste (oracle, win rates) beside the picture's quality."""
    base, ours, kept, fid = summary["models"]["base"], summary["models"]["perfusion"], summary["kept_quality"], \
        summary["fid"]
    return (f"{base['oracle']:.3f} → {ours['oracle']:.3f} | {kept['oracle_win_rate']:.2f} | "
            f"{kept['perfusionrm_win_rate']:.2f} | {base['clean_background']:.2f} → {ours['clean_background']:.2f} | "
            f"{base['intact']:.2f} → {ours['intact']:.2f} | {base['clip']:.1f} → {ours['clip']:.1f} | "
            f"{fid['base']:.3f} → {fid['perfusion']:.3f} | {kept['denoising_error_ratio']:.2f}")
