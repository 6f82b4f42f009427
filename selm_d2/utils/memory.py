"""Peak CPU tensor memory of a call, from the allocator's own accounting."""
__all__ = ["cpu_allocation_peak_mb"]


def cpu_allocation_peak_mb(fn):
    """Peak of the CPU tensor memory that ``fn()`` allocates above what was allocated when it
    started (MB), from torch.profiler's allocation events: each carries the allocator's running
    total, so the peak is exact and does not depend on what the C library keeps mapped (which
    the process's RSS does). None where this torch's profiler gives no such events."""
    try:
        from torch._C._profiler import _EventType
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        return None
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:
        stack = list(prof.profiler.kineto_results.experimental_event_tree())
    except AttributeError:
        return None
    events = []
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            fields = node.extra_fields
            events.append((node.start_time_ns, fields.alloc_size, fields.total_allocated))
        stack.extend(node.children)
    if not events:
        return None
    events.sort()
    start = events[0][2] - events[0][1]  # the running total before the first event
    return max(0, max(total for _, _, total in events) - start) / 2**20
