/* Pith's umbrella header: include this one. Each layer's contract lives in its own header. */
#ifndef PITH_PITH_H
#define PITH_PITH_H

#include <pith/actor.h>
#include <pith/client.h>
#include <pith/error.h>
#include <pith/engine.h>
#include <pith/file.h>
#include <pith/hash.h>
#include <pith/journal.h>
#include <pith/mem.h>
#include <pith/metrics.h>
#include <pith/net.h>
#include <pith/persist.h>
#include <pith/sla.h>
#include <pith/timer.h>
#include <pith/vactor.h>
#include <pith/version.h>

#endif
