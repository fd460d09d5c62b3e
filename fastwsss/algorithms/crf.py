"""Optional dense-CRF refinement of seed labels (IRNet refines both IR-label argmaxes with it).

Needs `pydensecrf2` (`pip install 'fastwsss[crf]'`; it ships only sources, so a C++ compiler is required).
Without it, `ir_label.crf` must stay off and the stage says so in one line.
"""

from __future__ import annotations

import numpy as np

from fastwsss.errors import ConfigError


def crf_available() -> bool:
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


def crf_refine_labels(
    image: np.ndarray, labels: np.ndarray, num_labels: int, iterations: int = 10, confidence: float = 0.7
) -> np.ndarray:
    """Refine a hard label map (values 0..num_labels-1) with a fully connected CRF on the RGB image.

    The unary term trusts each given label with probability `confidence`; the pairwise terms are IRNet's
    (a 3-pixel smoothness kernel of weight 3 and an appearance kernel of 50 px / 5 intensity levels of
    weight 10). Returns the refined (H, W) int64 label map.
    """
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_labels
    except ImportError:
        raise ConfigError("ir_label.crf: pydensecrf2 is not installed; pip install 'fastwsss[crf]' or turn crf off") from None
    height, width = labels.shape
    if num_labels < 2:
        return np.zeros((height, width), dtype=np.int64)
    crf = dcrf.DenseCRF2D(width, height, num_labels)
    crf.setUnaryEnergy(unary_from_labels(labels.astype(np.int64), num_labels, gt_prob=confidence, zero_unsure=False))
    crf.addPairwiseGaussian(sxy=3, compat=3)
    crf.addPairwiseBilateral(sxy=50, srgb=5, rgbim=np.ascontiguousarray(image, dtype=np.uint8), compat=10)
    q = np.asarray(crf.inference(iterations)).reshape(num_labels, height, width)
    return q.argmax(axis=0)


def crf_refine_probs(image: np.ndarray, probs: np.ndarray, iterations: int = 10) -> np.ndarray:
    """DeepLab's test-time CRF: (K, H, W) softmax probabilities refined on the RGB image -> (H, W) int64 labels.

    The released DeepLab configs' kernels (configs/voc12.yaml CRF section): unary -log(p), a smoothness kernel
    of 1 px and weight 3, an appearance kernel of 67 px / 3 intensity levels and weight 4, 10 iterations.
    """
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError:
        raise ConfigError("seg.crf: pydensecrf2 is not installed; pip install 'fastwsss[crf]' or turn crf off") from None
    classes, height, width = probs.shape
    crf = dcrf.DenseCRF2D(width, height, classes)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(np.ascontiguousarray(probs, dtype=np.float32))))
    crf.addPairwiseGaussian(sxy=1, compat=3)
    crf.addPairwiseBilateral(sxy=67, srgb=3, rgbim=np.ascontiguousarray(image, dtype=np.uint8), compat=4)
    q = np.asarray(crf.inference(iterations)).reshape(classes, height, width)
    return q.argmax(axis=0)
