"""The application: one image's job (explain + write its files), dataset runs (local and on Ray), the
manifest, dataset listing and the evaluate job. Options arrive as frozen dataclasses; nothing here
knows argparse."""
