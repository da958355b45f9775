"""Reports: the ranked candidate model, plots, and the files of reports, profiles and searches."""
