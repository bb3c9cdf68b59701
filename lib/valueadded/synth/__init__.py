"""The generated England-shaped national cohort (`valueadded generate`)."""

# The pupil pseudonym key of generated cohorts: used by bin/release (when it generates
# the cohort), the benchmark and the tests. Not a secret, and never for real pupils'
# data, whose key comes from a secret store (valueadded.io.pseudonym).
SYNTHETIC_COHORT_PSEUDONYM_KEY = "synthetic-cohort-development-key--not-secret--never-for-real-pupils"
