/* libFuzzer target for the client's WebSocket transport (client/
 * transport_ws.c) under libringbus: a fake server on 127.0.0.1 either
 * answers the upgrade correctly and then sends the input as WebSocket
 * frames (first input byte even), or sends the input itself as its answer
 * to the upgrade (first byte odd), so both the 101 head check and the
 * frame stream the shared parser reads in the client role (transports/
 * wsframe.c: fragments, control frames, Close, masks, reserved bits,
 * lengths) meet hostile bytes. The library then handles
 * whatever ringbus frames the binary messages carry (client_drive.h says
 * what is checked).
 *
 * Build and run with `make fuzz T=client_ws` (clang 14 with libFuzzer);
 * `make test` replays tests/fuzz/corpus/client_ws through the same target. */
#include <stdint.h>

#define FAKE_WITH_WS 1
#include "tests/fuzz/client_drive.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CLIENT_WS_INPUT_BYTES_MAX (256u * 1024u)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0 || size > CLIENT_WS_INPUT_BYTES_MAX) {
        return 0;
    }
    fake_job job = {.data = data + 1, .len = size - 1};
    job.mode = (data[0] & 1) ? FAKE_RAW : FAKE_WS_UPGRADE;
    drive("ws", &job);
    return 0;
}
