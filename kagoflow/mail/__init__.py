"""Mail: templates and rendering, message building, tracking tokens, delivery and the preview commands."""
