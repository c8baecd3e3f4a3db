//! Unpacking a layer tar into a snapshot directory (in progress).
