//! Hostile images: each is refused with a message naming the image, layer
//! and entry; nothing appears outside the cache and no partial layer
//! remains in it.
