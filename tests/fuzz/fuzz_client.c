/* libFuzzer target for libringbus receiving hostile server bytes over
 * tcp://: a fake server (fake_server.h) on 127.0.0.1 sends the input as its
 * whole side of the conversation (STARTED or not, then any frames), and
 * the real library connects, publishes, mutates and takes events
 * (client_drive.h says what is checked). Frame decoding, the handshake,
 * publish correlation, event queueing and the close path all run.
 *
 * Build and run with `make fuzz T=client` (clang 14 with libFuzzer);
 * `make test` replays tests/fuzz/corpus/client through the same target. */
#include <stdint.h>

#include "tests/fuzz/client_drive.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Inputs larger than the socket buffers would only slow fuzzing down. */
#define CLIENT_INPUT_BYTES_MAX (256u * 1024u)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > CLIENT_INPUT_BYTES_MAX) {
        return 0;
    }
    fake_job job = {.data = data, .len = size, .mode = FAKE_RAW};
    drive("tcp", &job);
    return 0;
}
