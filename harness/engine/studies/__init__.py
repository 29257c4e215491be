"""The evaluation studies (harness.engine.studies.base says what a study is). Importing this
package registers every study below, in the order their rows appear; adding one is a module
and one line here."""

from harness.engine.studies import (  # noqa: F401  (each import registers its study)
    test_likelihood,
    kl_per_layer,
    active_units,
    importance_weighted,
    bits_by_resolution,
    costs,
    sample_grid,
    hierarchy_figures,
    sample_quality,
    lossless_codec,
)
from harness.engine.studies.base import (  # noqa: F401
    INPUTS, LIKELIHOOD, POSTERIOR_MEANS, SAMPLES, TRAIN_IMAGES, Study, StudyContext, StudyCost,
    StudySkipped, register, registered, unregister,
)
