"""Cell-type fractions of the bulk samples: the estimators, their markers and the fit check."""
