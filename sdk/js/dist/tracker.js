export class SeqTracker {
    constructor() {
        this.pending = new Map();
        this.early = [];
        this.awaiting = false;
        this.replayUpTo = -1;
        /** Messages dropped because their seq was already delivered or held. */
        this.duplicates = 0;
        /** A history fetch for the current hole is in flight (set and cleared by the caller). */
        this.fetching = false;
    }
    get epoch() {
        return this.epochV;
    }
    /** The last seq delivered (or skipped as lost); undefined before the channel's position is known. */
    get last() {
        return this.lastV;
    }
    /** Where to resume from: the epoch and the last seq delivered. */
    position() {
        return this.epochV !== undefined && this.lastV !== undefined ? { epoch: this.epochV, seq: this.lastV } : undefined;
    }
    /** Adopts a position the app kept (e.g. across a page reload) to resume from. */
    setPosition(p) {
        this.epochV = p.epoch;
        this.lastV = p.seq;
        this.pending.clear();
    }
    /** Seqs held back behind a hole. */
    get held() {
        return this.pending.size;
    }
    /** A join (or auth) was sent: messages until its reply are held as early arrivals. */
    begin() {
        this.awaiting = true;
        this.early = [];
        this.fetching = false;
    }
    /** The connection is gone: keep the position and what is held, forget the rest. */
    suspend() {
        this.awaiting = false;
        this.early = [];
        this.fetching = false;
    }
    /** Forget everything (a leave, or a broadcast channel on a new connection). */
    reset() {
        this.epochV = undefined;
        this.lastV = undefined;
        this.pending.clear();
        this.early = [];
        this.awaiting = false;
        this.replayUpTo = -1;
        this.fetching = false;
    }
    /**
     * The join/auth reply arrived. `resumed`: the op carried `since` (this tracker's position).
     * - recovered: the missed messages follow as batches, flagged replayed up to `last_seq`;
     * - not recovered: reload, subscribed from `last_seq` on;
     * - fresh: messages that came before the reply (seq ≤ last_seq) are delivered, then the
     *   position is `last_seq`.
     */
    subscribed(reply, resumed) {
        const out = { deliver: [], lost: [] };
        this.awaiting = false;
        const early = this.early;
        this.early = [];
        if (resumed && reply.recovered !== false && this.lastV !== undefined && reply.epoch === this.epochV) {
            this.replayUpTo = reply.last_seq;
            this.accept(early, false, out);
            return out;
        }
        if (resumed) {
            this.pending.clear();
            this.epochV = reply.epoch;
            this.lastV = reply.last_seq;
            out.reload = {
                reason: reply.reason ?? (reply.recovered === false ? "not_recovered" : "epoch_changed"),
                epoch: reply.epoch,
                lastSeq: reply.last_seq,
            };
            this.accept(early.filter((m) => m.seq > reply.last_seq), false, out);
            return out;
        }
        this.pending.clear();
        this.epochV = reply.epoch;
        early.sort((a, b) => a.seq - b.seq);
        let last = -1;
        for (const m of early) {
            if (m.seq > reply.last_seq)
                break;
            if (m.seq <= last) {
                this.duplicates++;
                continue;
            }
            out.deliver.push({ msg: m, replayed: false });
            last = m.seq;
        }
        this.lastV = reply.last_seq;
        this.accept(early.filter((m) => m.seq > reply.last_seq), false, out);
        return out;
    }
    /** Messages from a batch, in the order they came. */
    ingest(msgs) {
        const out = { deliver: [], lost: [] };
        if (this.awaiting) {
            this.early.push(...msgs);
            return out;
        }
        this.accept(msgs, false, out);
        return out;
    }
    accept(msgs, replayed, out) {
        for (const m of msgs) {
            if (this.lastV === undefined)
                this.lastV = m.seq - 1; // position unknown (broadcast): start here
            if (m.seq <= this.lastV || this.pending.has(m.seq)) {
                this.duplicates++;
                continue;
            }
            this.pending.set(m.seq, { msg: m, replayed: replayed || m.seq <= this.replayUpTo });
        }
        this.drain(out);
    }
    drain(out) {
        if (this.lastV === undefined)
            return;
        for (;;) {
            const next = this.pending.get(this.lastV + 1);
            if (!next)
                return;
            this.pending.delete(this.lastV + 1);
            this.lastV += 1;
            out.deliver.push(next);
        }
    }
    minHeld() {
        let min;
        for (const k of this.pending.keys())
            if (min === undefined || k < min)
                min = k;
        return min;
    }
    /** The first hole, when a later seq is held behind it. */
    hole() {
        if (this.awaiting || this.lastV === undefined)
            return undefined;
        const min = this.minHeld();
        if (min === undefined)
            return undefined;
        return { since: this.lastV, upTo: min - 1 };
    }
    /** Give up on the first hole: report it lost and deliver what follows it. */
    skipHole() {
        const out = { deliver: [], lost: [] };
        const h = this.hole();
        if (!h)
            return out;
        out.lost.push({ from: h.since + 1, to: h.upTo, at: out.deliver.length });
        this.lastV = h.upTo;
        this.drain(out);
        return out;
    }
    /**
     * A history page asked with `since` and `limit` arrived. Its messages fill holes; a seq the
     * page covers but does not hold, below a seq already held, is lost (live delivery is in order,
     * so it will not come). A page that is full covers only up to its last message: the caller
     * asks again (`hole()` still answers) for the rest.
     */
    onHistory(page, limit) {
        const out = { deliver: [], lost: [] };
        this.fetching = false;
        if (this.lastV === undefined)
            return out;
        let coveredTo;
        if (page.epoch !== this.epochV) {
            // The channel's numbering or history was lost while this connection stayed up.
            this.epochV = page.epoch;
            out.reload = { reason: "epoch_changed", epoch: page.epoch, lastSeq: page.last_seq };
            coveredTo = Number.MAX_SAFE_INTEGER;
        }
        else {
            const full = page.msgs.length >= limit && page.msgs.length > 0;
            coveredTo = full ? page.msgs[page.msgs.length - 1].seq : page.last_seq;
            this.accept(page.msgs, true, out);
        }
        for (;;) {
            this.drain(out);
            const min = this.minHeld();
            if (min === undefined || this.lastV + 1 > coveredTo)
                break;
            const to = Math.min(min - 1, coveredTo);
            out.lost.push({ from: this.lastV + 1, to, at: out.deliver.length });
            this.lastV = to;
        }
        return out;
    }
}
//# sourceMappingURL=tracker.js.map