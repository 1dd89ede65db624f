/* Pool items under AddressSanitizer: a free item's bytes past its first
 * two words (the pool's link, and a header word its owner may check, such
 * as a block's home) are poisoned, so a use after it went back to its pool is reported
 * where it happens, and giving an item back twice stops at once. Nothing
 * in other builds. */
#ifndef RB_COMMON_POISON_H
#define RB_COMMON_POISON_H

#include <stddef.h>

/* The words of a free item left readable. */
#define RB_POISON_SKIP_BYTES (2 * sizeof(void *))

#if defined(__SANITIZE_ADDRESS__)
#define RB_POISON_ITEMS 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define RB_POISON_ITEMS 1
#endif
#endif

#ifdef RB_POISON_ITEMS
#include <sanitizer/asan_interface.h>

#include "common/assert.h"

/* item is going back to its pool: a second put of the same item (its
 * body already poisoned) is a bug. */
static inline void rb_poison_item(void *item, size_t bytes)
{
    if (bytes > RB_POISON_SKIP_BYTES) {
        char *body = (char *)item + RB_POISON_SKIP_BYTES;
        RB_ASSERT(!__asan_address_is_poisoned(body));
        ASAN_POISON_MEMORY_REGION(body, bytes - RB_POISON_SKIP_BYTES);
    }
}

static inline void rb_unpoison_item(void *item, size_t bytes)
{
    ASAN_UNPOISON_MEMORY_REGION(item, bytes);
}
#else
static inline void rb_poison_item(void *item, size_t bytes)
{
    (void)item;
    (void)bytes;
}

static inline void rb_unpoison_item(void *item, size_t bytes)
{
    (void)item;
    (void)bytes;
}
#endif

#endif
