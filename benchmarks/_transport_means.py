"""How ConditionalTransport estimates its cell means, as the benchmarks name the settings (docs/TRAINED_CONCEALMENT.md
§12): each cell's own training mean with the smooth mean at a fixed ridge penalty (the step's defaults, and how the
first variants were measured), the cell means shrunk by empirical Bayes, or both means shrunk (the smooth mean's
penalty chosen by leave-one-out error). Spelled out, so a named setting never follows a change of default."""

OWN_MEANS = {"mean_shrinkage": 0.0, "ridge_alpha": 1.0}
SHRUNK_CELL_MEANS = {"mean_shrinkage": "auto", "ridge_alpha": 1.0}
SHRUNK_MEANS = {"mean_shrinkage": "auto", "ridge_alpha": "auto"}
