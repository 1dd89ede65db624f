/* Picks the storage backend the configuration names. Backends live in their
 * own files; this one only maps the config's choice to an ops table. */
#include "storage/storage.h"

const rb_storage_ops *rb_storage_ops_for(const rb_config *cfg)
{
    switch (cfg->storage_backend) {
    case RB_STORAGE_MEMORY:
        return &rb_storage_memory_ops;
    case RB_STORAGE_POSTGRES:
        return &rb_storage_postgres_ops;
    }
    return NULL;
}
