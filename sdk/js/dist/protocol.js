// Wire types of the roomcast client protocol (PROTOCOL.md §2 and §3), shared by both codecs.
// The JSON codec produces and consumes exactly these shapes; the binary codec maps its frames
// onto them, so everything above the codec sees one protocol.
export const RECOVERY_REASONS = [
    "epoch_changed",
    "too_old",
    "too_many",
    "not_stored",
];
/** The largest integer JSON and the binary u64 fields carry exactly here. */
export const MAX_SEQ = Number.MAX_SAFE_INTEGER;
//# sourceMappingURL=protocol.js.map