/// At most `maxConcurrency` runs at once and at most `queueSize` waiting; beyond
/// that a request is refused (the HTTP layer answers 429 with Retry-After).
public actor Admission {
    public let maxConcurrency: Int
    public let queueSize: Int
    private var running = 0
    private var waiters: [CheckedContinuation<Void, Never>] = []
    private var draining = false

    public init(maxConcurrency: Int, queueSize: Int) {
        self.maxConcurrency = max(1, maxConcurrency)
        self.queueSize = max(0, queueSize)
    }

    public enum Refusal: Error { case full, draining }

    /// Waits for a slot, or refuses at once when the queue is full.
    public func acquire() async throws(Refusal) {
        if draining { throw .draining }
        if running < maxConcurrency {
            running += 1
            return
        }
        guard waiters.count < queueSize else { throw .full }
        await withCheckedContinuation { waiters.append($0) }
        // the slot was handed over by release()
    }

    public func release() {
        if waiters.isEmpty {
            running -= 1
        } else {
            waiters.removeFirst().resume()  // hand the slot over directly
        }
    }

    /// No new admissions (shutdown).
    public func drain() { draining = true }

    public var inFlight: Int { running }
    public var queued: Int { waiters.count }
}
