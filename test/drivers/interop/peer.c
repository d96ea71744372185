/* A ROS 2-style Cyclone DDS peer in C, built against Debian's Cyclone DDS 0.10 (the core that
 * ROS 2 Humble/Jazzy ship in rmw_cyclonedds) with types from `idlc -t` (no XTypes type
 * information, like rmw_cyclonedds). test_dds_interop.py builds and drives it.
 *
 *   peer sub DOMAIN pose|image TOPIC best_effort|reliable COUNT TIMEOUT_S [DUMP_DIR]
 *       print one line per sample (image data goes to DUMP_DIR/<sec>_<nanosec>.raw);
 *       exit 0 after COUNT samples, 2 on timeout
 *   peer pub DOMAIN pose|image TOPIC best_effort|reliable COUNT PERIOD_MS
 *       wait for a subscriber, publish COUNT samples (0 = until killed) with the contents
 *       expected_pose()/expected_image() in the test compute from the index i
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dds/dds.h"
#include "ros.h"

#define IMAGE_W 640u
#define IMAGE_H 480u

static dds_qos_t *make_qos (const char *reliability, int32_t depth)
{
  dds_qos_t *qos = dds_create_qos ();
  if (strcmp (reliability, "reliable") == 0)
    dds_qset_reliability (qos, DDS_RELIABILITY_RELIABLE, DDS_MSECS (100));
  else
    dds_qset_reliability (qos, DDS_RELIABILITY_BEST_EFFORT, 0);
  dds_qset_history (qos, DDS_HISTORY_KEEP_LAST, depth);
  dds_qset_durability (qos, DDS_DURABILITY_VOLATILE);
  dds_data_representation_id_t xcdr1 = DDS_DATA_REPRESENTATION_XCDR1;
  dds_qset_data_representation (qos, 1, &xcdr1);
  return qos;
}

static void dump (const char *dir, int32_t sec, uint32_t nanosec, const uint8_t *buf, uint32_t n)
{
  char path[4096];
  snprintf (path, sizeof (path), "%s/%" PRId32 "_%" PRIu32 ".raw", dir, sec, nanosec);
  FILE *f = fopen (path, "wb");
  if (f == NULL || fwrite (buf, 1, n, f) != n)
  {
    fprintf (stderr, "cannot write %s\n", path);
    exit (3);
  }
  fclose (f);
}

static int run_sub (dds_entity_t pp, int is_image, const char *topic_name, const char *rel,
                    long count, long timeout_s, const char *dump_dir)
{
  const dds_topic_descriptor_t *desc =
    is_image ? &sensor_msgs_msg_dds__Image__desc : &geometry_msgs_msg_dds__PoseStamped__desc;
  dds_entity_t topic = dds_create_topic (pp, desc, topic_name, NULL, NULL);
  dds_qos_t *qos = make_qos (rel, is_image ? 5 : 10);
  dds_entity_t reader = dds_create_reader (pp, topic, qos, NULL);
  dds_delete_qos (qos);
  if (topic < 0 || reader < 0)
  {
    fprintf (stderr, "create reader: %s\n", dds_strretcode (reader < 0 ? reader : topic));
    return 1;
  }
  dds_entity_t ws = dds_create_waitset (pp);
  dds_entity_t rc = dds_create_readcondition (reader, DDS_ANY_STATE);
  dds_waitset_attach (ws, rc, 0);
  printf ("ready\n");
  fflush (stdout);

  void *samples[1] = { NULL };
  dds_sample_info_t info[1];
  long got = 0;
  dds_time_t deadline = dds_time () + DDS_SECS (timeout_s);
  while (got < count)
  {
    if (dds_waitset_wait_until (ws, NULL, 0, deadline) <= 0)
    {
      printf ("timeout received %ld\n", got);
      return 2;
    }
    int32_t n;
    while (got < count && (n = dds_take (reader, samples, info, 1, 1)) > 0)
    {
      if (info[0].valid_data)
      {
        if (is_image)
        {
          const sensor_msgs_msg_dds__Image_ *m = samples[0];
          printf ("image %" PRId32 " %" PRIu32 " %s %" PRIu32 " %" PRIu32 " %s %u %" PRIu32
                  " %" PRIu32 "\n", m->header.stamp.sec, m->header.stamp.nanosec,
                  m->header.frame_id, m->height, m->width, m->encoding,
                  (unsigned) m->is_bigendian, m->step, m->data._length);
          if (dump_dir)
            dump (dump_dir, m->header.stamp.sec, m->header.stamp.nanosec, m->data._buffer,
                  m->data._length);
        }
        else
        {
          const geometry_msgs_msg_dds__PoseStamped_ *m = samples[0];
          printf ("pose %" PRId32 " %" PRIu32 " %s %.17g %.17g %.17g %.17g %.17g %.17g %.17g\n",
                  m->header.stamp.sec, m->header.stamp.nanosec, m->header.frame_id,
                  m->pose.position.x, m->pose.position.y, m->pose.position.z,
                  m->pose.orientation.x, m->pose.orientation.y, m->pose.orientation.z,
                  m->pose.orientation.w);
        }
        fflush (stdout);
        got++;
      }
      dds_return_loan (reader, samples, n);
    }
  }
  return 0;
}

static int run_pub (dds_entity_t pp, int is_image, const char *topic_name, const char *rel,
                    long count, long period_ms)
{
  const dds_topic_descriptor_t *desc =
    is_image ? &sensor_msgs_msg_dds__Image__desc : &geometry_msgs_msg_dds__PoseStamped__desc;
  dds_entity_t topic = dds_create_topic (pp, desc, topic_name, NULL, NULL);
  dds_qos_t *qos = make_qos (rel, is_image ? 5 : 10);
  dds_entity_t writer = dds_create_writer (pp, topic, qos, NULL);
  dds_delete_qos (qos);
  if (topic < 0 || writer < 0)
  {
    fprintf (stderr, "create writer: %s\n", dds_strretcode (writer < 0 ? writer : topic));
    return 1;
  }
  dds_publication_matched_status_t st = { 0 };
  dds_time_t deadline = dds_time () + DDS_SECS (20);
  while (dds_get_publication_matched_status (writer, &st) == 0 && st.current_count == 0)
  {
    if (dds_time () > deadline)
    {
      printf ("no subscriber\n");
      return 2;
    }
    dds_sleepfor (DDS_MSECS (10));
  }
  printf ("matched\n");
  fflush (stdout);

  uint8_t *pixels = malloc (IMAGE_W * IMAGE_H * 3);
  for (long i = 0; count == 0 || i < count; i++)
  {
    dds_return_t ret;
    if (is_image)
    {
      for (uint32_t j = 0; j < IMAGE_W * IMAGE_H * 3; j++)
        pixels[j] = (uint8_t) ((j * 31u + (uint32_t) i * 7u) & 0xffu);
      sensor_msgs_msg_dds__Image_ m;
      memset (&m, 0, sizeof (m));
      m.header.stamp.sec = (int32_t) (200 + i);
      m.header.stamp.nanosec = (uint32_t) (i * 1000);
      m.header.frame_id = "c_peer";
      m.height = IMAGE_H;
      m.width = IMAGE_W;
      m.encoding = "rgb8";
      m.is_bigendian = 0;
      m.step = IMAGE_W * 3;
      m.data._length = m.data._maximum = IMAGE_W * IMAGE_H * 3;
      m.data._buffer = pixels;
      m.data._release = false;
      ret = dds_write (writer, &m);
    }
    else
    {
      geometry_msgs_msg_dds__PoseStamped_ m;
      memset (&m, 0, sizeof (m));
      m.header.stamp.sec = (int32_t) (100 + i);
      m.header.stamp.nanosec = (uint32_t) (i * 1000);
      m.header.frame_id = "c_peer";
      m.pose.position.x = (double) i * 0.125;
      m.pose.position.y = -(double) i * 0.5;
      m.pose.position.z = 0.25 + (double) i;
      m.pose.orientation.z = 0.6;
      m.pose.orientation.w = 0.8;
      ret = dds_write (writer, &m);
    }
    if (ret != DDS_RETCODE_OK)
    {
      fprintf (stderr, "write: %s\n", dds_strretcode (ret));
      return 1;
    }
    dds_sleepfor (DDS_MSECS (period_ms));
  }
  free (pixels);
  if (strcmp (rel, "reliable") == 0)
    dds_wait_for_acks (writer, DDS_SECS (5));
  printf ("sent %ld\n", count);
  return 0;
}

int main (int argc, char **argv)
{
  if (argc < 8 || (strcmp (argv[1], "sub") != 0 && strcmp (argv[1], "pub") != 0))
  {
    fprintf (stderr, "usage: peer sub|pub DOMAIN pose|image TOPIC RELIABILITY COUNT "
                     "TIMEOUT_S|PERIOD_MS [DUMP_DIR]\n");
    return 1;
  }
  dds_entity_t pp = dds_create_participant ((dds_domainid_t) atoi (argv[2]), NULL, NULL);
  if (pp < 0)
  {
    fprintf (stderr, "create participant: %s\n", dds_strretcode (pp));
    return 1;
  }
  int is_image = strcmp (argv[3], "image") == 0;
  int rc;
  if (strcmp (argv[1], "sub") == 0)
    rc = run_sub (pp, is_image, argv[4], argv[5], atol (argv[6]), atol (argv[7]),
                  argc > 8 ? argv[8] : NULL);
  else
    rc = run_pub (pp, is_image, argv[4], argv[5], atol (argv[6]), atol (argv[7]));
  dds_delete (pp);
  return rc;
}
