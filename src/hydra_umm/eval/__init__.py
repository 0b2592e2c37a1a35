"""Evaluation: reconstruction metrics (PSNR, SSIM, rFID; per-frame PSNR/SSIM and rFVD for clips), CKNNA,
the flow loss with and without the prompt (conditioning), benchmark writers, the lmms-eval adapter,
feature maps and the HTML report."""

from hydra_umm.eval.cknna import cknna, cknna_pairs
from hydra_umm.eval.features import embed_2d, plot_feature_maps
from hydra_umm.eval.fvd import clip_reconstruction_metrics, frame_psnr, frame_ssim, i3d_features, load_i3d, rfvd
from hydra_umm.eval.frechet import frechet_distance, gaussian_statistics, inception_features, load_inception, rfid
from hydra_umm.eval.metrics import psnr, ssim
from hydra_umm.eval.reconstruction import evaluate_reconstruction, load_images
from hydra_umm.eval.report import ReportContent, read_scalars, report_run, write_report

__all__ = [
    "psnr",
    "ssim",
    "frechet_distance",
    "gaussian_statistics",
    "inception_features",
    "load_inception",
    "rfid",
    "frame_psnr",
    "frame_ssim",
    "load_i3d",
    "i3d_features",
    "rfvd",
    "clip_reconstruction_metrics",
    "cknna",
    "cknna_pairs",
    "evaluate_reconstruction",
    "load_images",
    "embed_2d",
    "plot_feature_maps",
    "ReportContent",
    "read_scalars",
    "report_run",
    "write_report",
]
