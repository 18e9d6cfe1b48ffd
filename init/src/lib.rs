//! herd-init library: configuration types shared with the image builder.
