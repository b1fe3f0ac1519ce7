//! Pure domain of annals (being built; see issue 3).
