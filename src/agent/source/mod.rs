//! The chat.db reader and change detection.
